"""``calibscope selective``: risk–coverage, AURC and E-AURC (Geifman et al. 2019) when the model may abstain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from calibscope.cli._common import (
    HELP,
    HELP_LAYER,
    HELP_SCORES,
    HELP_SHRINKAGE,
    HELP_TEMPERATURE,
    HELP_TRAIN,
    MODEL_OPTIONS,
    EnsembleOpt,
    JsonOpt,
    LogOpt,
    McDropoutOpt,
    McSeedOpt,
    ValOpt,
    cli_errors,
    detector_options,
    with_options,
)
from calibscope.workflows.ood import DEFAULT_SHRINKAGE
from calibscope.workflows.selective import DEFAULT_COVERAGES, DEFAULT_SCORES


@with_options(detector_options, *MODEL_OPTIONS)
def selective(
    checkpoints: list[Path] = typer.Argument(
        ..., help="Checkpoint (.pt2, TorchScript, state_dict, safetensors) or logits "
                  "file; several with --ensemble.", show_default=False),
    data: Path | None = typer.Option(None, "--data", "-d", help=HELP["data"], show_default=False),
    score: str = typer.Option(",".join(DEFAULT_SCORES), "--score", "--detector", "-s",
                              help=HELP_SCORES + "; several are drawn side by side."),
    coverage: str = typer.Option(",".join(map(str, DEFAULT_COVERAGES)), "--coverage",
                                 help="Coverages at which to report the accuracy of the kept examples "
                                 "(comma-separated, in (0, 1])."),
    target_risk: float | None = typer.Option(None, "--target-risk", help="Report the largest coverage whose "
                                             "error rate is at most this (e.g. 0.01) and its threshold.",
                                             show_default=False),
    temperature: str = typer.Option("1", "--temperature", "-T", help=HELP_TEMPERATURE, show_default=False),
    train: Path | None = typer.Option(None, "--train", help=HELP_TRAIN, show_default=False),
    val: ValOpt = None,
    shrinkage: str = typer.Option(DEFAULT_SHRINKAGE, "--shrinkage", help=HELP_SHRINKAGE),
    layer: str | None = typer.Option(None, "--layer", help=HELP_LAYER, show_default=False),
    json_: JsonOpt = False,
    log: LogOpt = None,
    out: Path | None = typer.Option(None, "--out", "-o", help=HELP["out"] + " Risk–coverage curve: "
                                    "risk_coverage.png/.svg; numbers: selective.json.", show_default=False),
    ensemble: EnsembleOpt = False,
    mc_dropout: McDropoutOpt = None,
    seed: McSeedOpt = 0,
    **options: Any,
) -> None:
    """Selective classification: error among the kept examples as the least confident are dropped.

    Sorts the examples by confidence, keeps the top k and plots the error rate among them (the risk) against
    the coverage k/n. AURC is the mean risk over all coverages; E-AURC subtracts the AURC of the best
    possible ranking (Geifman et al. 2019), so it measures the ranking alone. Also: accuracy at fixed
    coverages and the coverage reachable at a target risk, with its threshold.

    Examples:

      calibscope selective model.pt2 --data test.npz --target-risk 0.01

      calibscope selective model.pt2 --data test.npz --score msp,energy,mahalanobis --train train.npz --out figs/

      calibscope selective test_logits.npz --coverage 0.5,0.9 --json
    """
    with cli_errors():
        from calibscope.render import trackers

        log = trackers.check_trackers(log)
        from calibscope.cli._common import check_outputs

        check_outputs(folders={"--out": out})
        from calibscope.cli._common import (
            detector_settings,
            one_model,
            parse_floats,
            parse_shrinkage,
            parse_temperature,
            project_defaults,
            session_from_options,
        )
        from calibscope.render import selective_view
        from calibscope.workflows.selective import SelectiveSettings, run_selective

        settings = SelectiveSettings(scores=score, coverages=parse_floats(coverage, "coverage"),
                                     target_risk=target_risk, temperature=parse_temperature(temperature),
                                     shrinkage=parse_shrinkage(shrinkage),
                                     detectors=detector_settings(options))
        session = session_from_options(data=data, defaults=project_defaults(), layer=layer, **options)
        name, model = one_model(checkpoints, ensemble=ensemble, mc_dropout=mc_dropout, seed=seed)
        result = run_selective(session, model, settings, train=train, val=val, name=name)
        doc = selective_view.document(result)
        trackers.log_run(log, name="selective", document=doc)
        written = selective_view.write_outputs(out, result, doc) if out is not None else None
        if json_:
            selective_view.print_json(doc)
        else:
            selective_view.print_tables(result, written=written)
