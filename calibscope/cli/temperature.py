"""``calibscope temperature``: fit the temperature of softmax(z / T) (Guo et al. 2017, §4.2) on one data set,
report the calibration before and after, on that set and (``--apply``) on a held-out one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from calibscope.cli._common import (
    HELP,
    MODEL_OPTIONS,
    EnsembleOpt,
    JsonOpt,
    LogOpt,
    McDropoutOpt,
    McSeedOpt,
    cli_errors,
    with_options,
)
from calibscope.diagnostics.defaults import DEFAULT_BINS
from calibscope.workflows.temperature import DEFAULT_OBJECTIVE


@with_options(*MODEL_OPTIONS)
def temperature(
    checkpoints: list[Path] = typer.Argument(
        ..., help="Checkpoint (.pt2, TorchScript, state_dict, safetensors) or logits file to fit a "
                  "temperature for; several with --ensemble.", show_default=False),
    data: Path | None = typer.Option(None, "--data", "-d", help="Data to fit T on (a validation split). "
                                     + HELP["data"], show_default=False),
    apply: Path | None = typer.Option(None, "--apply", help="Held-out data to apply T to and report on (a "
                                      "dataset; for a logits-file checkpoint, another logits file).",
                                      show_default=False),
    objective: str = typer.Option(DEFAULT_OBJECTIVE, "--objective", help="Which temperature to choose: nll (the exact "
                                  "NLL optimum, Guo et al.) or ece (the ECE optimum, by search)."),
    bins: int | None = typer.Option(None, "--bins", help="Number of equal-width confidence bins for ECE "
                                    f"[default: {DEFAULT_BINS}].", show_default=False),
    save_temperature: Path | None = typer.Option(None, "--save-temperature", help="Write the result (T and how "
                                                 "it was fitted) to this JSON file, for `calibscope ece "
                                                 "--temperature-from`.", show_default=False),
    json_: JsonOpt = False,
    log: LogOpt = None,
    out: Path | None = typer.Option(None, "--out", "-o", help=HELP["out"] + " temperature_sweep.png/.svg "
                                    "(ECE and NLL against T), reliability_before/after, temperature.json.",
                                    show_default=False),
    ensemble: EnsembleOpt = False,
    mc_dropout: McDropoutOpt = None,
    seed: McSeedOpt = 0,
    **options: Any,
) -> None:
    """Fit the temperature T of softmax(z / T): the exact NLL optimum (safeguarded Newton on 1/T) and the
    ECE optimum (search), with a sweep of T from 0.05 to 20 and ECE/NLL/Brier before and after.

    Examples:

      calibscope temperature model.pt2 --data val.npz --apply test.npz --out figs/

      calibscope temperature model.pt2 --data val.npz --save-temperature t.json

      calibscope ece model.pt2 --data test.npz --temperature-from t.json
    """
    with cli_errors():
        from calibscope.render import trackers

        log = trackers.check_trackers(log)
        from calibscope.cli._common import check_outputs

        check_outputs(files={"--save-temperature": save_temperature}, folders={"--out": out})
        from calibscope.cli._common import echo_err, one_model, pick, project_defaults, session_from_options
        from calibscope.render import temperature_view as view
        from calibscope.workflows.temperature import TemperatureSettings, run_temperature

        defaults = project_defaults()
        settings = TemperatureSettings(objective=objective, n_bins=pick(bins, defaults, "bins", DEFAULT_BINS))
        session = session_from_options(data=data, defaults=defaults, **options)
        held_out = None if apply is None else session.for_data(apply, split=session.split,
                                                               label_column=session.label_column)
        name, model = one_model(checkpoints, ensemble=ensemble, mc_dropout=mc_dropout, seed=seed)
        result = run_temperature(session, model, settings, apply=held_out, name=name)
        doc = view.document(result)
        trackers.log_run(log, name="temperature", document=doc)
        for w in result.warnings:
            echo_err(f"warning: {w}")
        written = view.write_outputs(out, result, doc) if out is not None else None
        if save_temperature is not None:
            view.save_temperature(save_temperature, doc)
        if json_:
            view.print_json(doc)
        else:
            view.print_tables(result, written=written)
