"""``calibscope calibrate``: fit a calibrator on validation data and write the calibrated model (``.pt2``) or a
calibrator file (``.json``); ``--methods all`` compares every method on held-out data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from calibscope.cli._common import (
    HELP,
    EnsembleOpt,
    JsonOpt,
    LogOpt,
    McDropoutOpt,
    cache_option,
    checkpoint_options,
    cli_errors,
    data_options,
    device_option,
    inference_options,
    with_options,
)
from calibscope.workflows.calibrate import (
    ALL_METHODS,
    CRITERIA,
    DEFAULT_BOOTSTRAP,
    DEFAULT_CRITERION,
    DEFAULT_HOLDOUT,
    DEFAULT_METHODS,
)


@with_options(checkpoint_options, device_option, inference_options, data_options, cache_option)
def calibrate(
    checkpoints: list[Path] = typer.Argument(
        ..., help="Checkpoint (.pt2, TorchScript, state_dict, safetensors) or logits file of the validation data; "
                  "several with --ensemble.", show_default=False),
    val: Path | None = typer.Option(None, "--val", help="Validation data the calibrator is fitted on (not "
                                    "needed for a logits file that carries its labels).", show_default=False),
    test: Path | None = typer.Option(None, "--test", help="Held-out data the methods are scored on (a logits "
                                     "file of the same model for logits input). Without it several methods are "
                                     "compared on a held-out part of --val.", show_default=False),
    out_file: Path | None = typer.Option(None, "--output-file", "-o", help="Write the calibrated model "
                                         "(NAME.pt2: the model with the calibrator appended, loads like any "
                                         ".pt2) or the calibrator (NAME.json, for `calibscope ece --calibrator`).",
                                         show_default=False),
    methods: str = typer.Option(",".join(DEFAULT_METHODS), "--methods", "--method", "-m",
                                help=f"Comma-separated methods or all: {', '.join(ALL_METHODS)} (platt and beta "
                                "for two classes)."),
    criterion: str = typer.Option(DEFAULT_CRITERION, "--criterion", help=f"What 'best' minimises on the held-out "
                                  f"data: {', '.join(CRITERIA)}."),
    bootstrap: int = typer.Option(DEFAULT_BOOTSTRAP, "--bootstrap", help="Bootstrap resamples of the held-out "
                                  "examples for the intervals (0 = none, else ≥ 200)."),
    holdout: float = typer.Option(DEFAULT_HOLDOUT, "--holdout", help="Fraction of --val held out for scoring "
                                  "when no --test is given and several methods compete."),
    seed: int = typer.Option(0, "--seed", help="Seed of the hold-out split, the bootstrap and the MC-dropout "
                             "masks."),
    ensemble: EnsembleOpt = False,
    mc_dropout: McDropoutOpt = None,
    histogram_bins: int | None = typer.Option(None, "--histogram-bins", help="Bins of histogram binning "
                                              "[default: 15].", show_default=False),
    odir_lambda: float | None = typer.Option(None, "--odir-lambda", help="ODIR off-diagonal weight λ of matrix "
                                             "and Dirichlet scaling [default: 0.01].", show_default=False),
    odir_mu: float | None = typer.Option(None, "--odir-mu", help="ODIR intercept weight μ [default: 0.01].",
                                         show_default=False),
    json_: JsonOpt = False,
    log: LogOpt = None,
    out: Path | None = typer.Option(None, "--out", help=HELP["out"] + " Figure: calibrators.png/.svg; numbers: "
                                    "calibrate.json.", show_default=False),
    **options: Any,
) -> None:
    """Post-hoc calibration you can deploy: fit on --val, score on --test, write the calibrated model.

    Methods: temperature (exact NLL optimum), vector and matrix scaling, Dirichlet calibration with ODIR
    (Kull et al. 2019), histogram binning and isotonic regression (one-vs-rest, renormalised), Platt and beta
    calibration (two classes). The .pt2 written is torch.export of model → calibrator: `calibscope ece
    calibrated.pt2` and torch.export.load read it as usual; method, parameters and a digest of the fit data
    are in its calibscope.json.

    Examples:

      calibscope calibrate model.pt2 --val val.npz --test test.npz -o calibrated.pt2

      calibscope calibrate model.pt2 --val val.npz --test test.npz --methods all --criterion ece --out figs/

      calibscope calibrate val_logits.npz --methods dirichlet -o calibrator.json
    """
    with cli_errors():
        from calibscope.render import trackers

        log = trackers.check_trackers(log)
        from calibscope.cli._common import one_model, session_from_options
        from calibscope.render import calibrate_view
        from calibscope.render.atomic import check_destination, check_folder
        from calibscope.workflows.calibrate import (
            CalibrateSettings,
            check_output,
            is_model,
            run_calibrate,
            write_calibrated,
        )

        settings = CalibrateSettings(methods=methods, criterion=criterion, bootstrap=bootstrap, holdout=holdout,
                                     seed=seed, histogram_bins=histogram_bins, odir_lambda=odir_lambda,
                                     odir_mu=odir_mu)
        check_destination(out_file, "--output-file")
        check_folder(out, "--out")
        session = session_from_options(data=val, defaults=None, **options)
        name, model = one_model(checkpoints, ensemble=ensemble, mc_dropout=mc_dropout, seed=seed)
        if out_file is not None:
            check_output(out_file, is_model(session, model),
                         what="a logits file" if isinstance(model, Path) else name)
        result = run_calibrate(session, model, settings, test=test, name=name)
        written = []
        if out_file is not None:
            written.append(write_calibrated(session, result, out_file))
        import dataclasses

        result = dataclasses.replace(result, written=tuple(str(p) for p in written))
        doc = calibrate_view.document(result)
        trackers.log_run(log, name="calibrate", document=doc)
        if out is not None:
            written += calibrate_view.write_outputs(out, result, doc)
        if json_:
            calibrate_view.print_json(doc)
        else:
            calibrate_view.print_tables(result, written=written)
