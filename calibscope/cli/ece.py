"""``calibscope ece``: expected calibration error (Guo et al. 2017) and friends for one or more checkpoints,
and the CI gate (``--max-ece``, ``--baseline`` + ``--max-increase``, ``--junit``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from calibscope.cli._common import (
    HELP,
    MODEL_OPTIONS,
    EnsembleOpt,
    FormatOpt,
    JsonOpt,
    LogOpt,
    McDropoutOpt,
    cli_errors,
    with_options,
)
from calibscope.diagnostics.defaults import DEFAULT_BAND_LEVEL, DEFAULT_BAND_RESAMPLES, DEFAULT_BINS
from calibscope.workflows.calibration import DEFAULT_NORM


@with_options(*MODEL_OPTIONS)
def ece(
    checkpoints: list[Path] = typer.Argument(
        ..., help="One or more checkpoints (.pt2, TorchScript, state_dict, safetensors, logits file), "
                  "compared side by side.", show_default=False),
    data: Path | None = typer.Option(None, "--data", "-d", help=HELP["data"], show_default=False),
    bins: int | None = typer.Option(None, "--bins", help="Number of equal-width confidence bins "
                                    f"[default: {DEFAULT_BINS}, as in Guo et al. 2017 and Müller et al. 2019].",
                                    show_default=False),
    norm: str | None = typer.Option(None, "--norm", help="Which ECE is reported as `ece` and gated: l1 (the "
                                    f"usual ECE), l2 (RMS) or max (MCE) [default: {DEFAULT_NORM}].",
                                    show_default=False),
    all_: bool = typer.Option(False, "--all", help="Show every metric: also ℓ2 and debiased ℓ2 ECE (Kumar "
                              "2019), ACE (equal-mass bins), classwise ECE (SCE) and smooth ECE."),
    bootstrap: int = typer.Option(0, "--bootstrap", help="Bootstrap confidence intervals from N resamples of "
                                  "the examples (N ≥ 200; 0 = off).", show_default=False),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap resampling, of the MC-dropout masks "
                             "and of the CORP band."),
    corp: bool = typer.Option(False, "--corp", help="Also the CORP reliability diagram (Dimitriadis, Gneiting & "
                              "Jordan 2021: isotonic regression of correctness on confidence, with consistency "
                              "bands) and the Brier and log score decompositions S = MCB − DSC + UNC; "
                              "figures corp_NAME in --out."),
    corp_resamples: int | None = typer.Option(None, "--corp-resamples", help="Resamples of the CORP consistency "
                                              f"band (0 = no band) [default: {DEFAULT_BAND_RESAMPLES}].",
                                              show_default=False),
    corp_level: float | None = typer.Option(None, "--corp-level", help="Level of the CORP consistency band "
                                            f"[default: {DEFAULT_BAND_LEVEL:g}].", show_default=False),
    bins_csv: Path | None = typer.Option(None, "--bins-csv", help="Write the per-bin table (every checkpoint) "
                                         "to this CSV file.", show_default=False),
    temperature: float | None = typer.Option(None, "--temperature", "-T", help="Divide the logits by this "
                                             "temperature first (e.g. one fitted by `calibscope temperature`).",
                                             show_default=False),
    temperature_from: Path | None = typer.Option(None, "--temperature-from", help="Read the temperature from a "
                                                 "file written by `calibscope temperature --save-temperature`.",
                                                 show_default=False),
    calibrator: Path | None = typer.Option(None, "--calibrator", help="Pass the logits through a calibrator "
                                           "written by `calibscope calibrate -o FILE.json` first.",
                                           show_default=False),
    max_ece: float | None = typer.Option(None, "--max-ece", help="Gate: exit 1 if any checkpoint's ECE is "
                                         "above this (e.g. 0.05).", show_default=False),
    baseline: Path | None = typer.Option(None, "--baseline", help="An earlier `calibscope ece --json` document "
                                         "to compare with (matched by checkpoint name).", show_default=False),
    max_increase: float | None = typer.Option(None, "--max-increase", help="Gate: exit 1 if ECE rose by more "
                                              "than this over --baseline (e.g. 0.005).", show_default=False),
    junit: Path | None = typer.Option(None, "--junit", help="Write the gate's result as JUnit XML (shown by "
                                      "GitLab, Jenkins, GitHub test reporters).", show_default=False),
    json_: JsonOpt = False,
    format_: FormatOpt = None,
    log: LogOpt = None,
    out: Path | None = typer.Option(None, "--out", "-o", help=HELP["out"] + " Reliability diagrams: "
                                    "reliability_NAME.png/.svg; numbers: ece.json.", show_default=False),
    ensemble: EnsembleOpt = False,
    mc_dropout: McDropoutOpt = None,
    **options: Any,
) -> None:
    """Expected calibration error and its family (MCE, ℓ2, debiased ℓ2, ACE, classwise, smooth ECE), NLL,
    Brier and accuracy, with the per-bin table; a CI gate.

    ECE = Σ_m |B_m|/n · |acc(B_m) − conf(B_m)| over M equal-width bins of the top-label confidence,
    right-closed ((m−1)/M, m/M] (Guo et al. 2017). Several checkpoints are shown side by side. Exit codes:
    0 ok, 1 a gate failed, 2 bad input.

    Examples:

      calibscope ece model.pt2 --data test.npz --all --bootstrap 1000

      calibscope ece a.pt2 b.pt2 --data test.npz --out figs/ --max-ece 0.05

      calibscope ece model.pt2 --baseline main-ece.json --max-increase 0.005 --junit ece.xml

      calibscope ece model.pt2 --data test.npz --temperature-from t.json

      calibscope ece hard.pt2 ls.pt2 --data test.npz --corp --out figs/
    """
    with cli_errors():
        from calibscope.cli._common import check_outputs

        check_outputs(files={"--junit": junit, "--bins-csv": bins_csv}, folders={"--out": out})
        from calibscope.cli._common import (
            echo_err,
            model_refs,
            output_format,
            pick,
            project_defaults,
            session_from_options,
        )
        from calibscope.errors import GateFailed, InputError
        from calibscope.render import ece_view, trackers

        shown = output_format(format_, json_)
        log = trackers.check_trackers(log)
        from calibscope.workflows.calibrate import read_calibrator
        from calibscope.workflows.calibration import CalibrationSettings, CorpSettings, run_calibration
        from calibscope.workflows.gate import ece_gate, read_baseline
        from calibscope.workflows.temperature import temperature_option

        for option, value in (("--corp-resamples", corp_resamples), ("--corp-level", corp_level)):
            if value is not None and not corp:
                raise InputError(f"{option} sets the CORP band: it needs --corp")
        corp_settings = None if not corp else CorpSettings(
            resamples=DEFAULT_BAND_RESAMPLES if corp_resamples is None else corp_resamples,
            level=DEFAULT_BAND_LEVEL if corp_level is None else corp_level, seed=seed)
        defaults = project_defaults()
        settings = CalibrationSettings(n_bins=pick(bins, defaults, "bins", DEFAULT_BINS),
                                       norm=pick(norm, defaults, "norm", DEFAULT_NORM), bootstrap=bootstrap,
                                       seed=seed, temperature=temperature_option(temperature, temperature_from),
                                       calibrator=None if calibrator is None else read_calibrator(calibrator),
                                       calibrator_source=None if calibrator is None else str(calibrator),
                                       corp=corp_settings)
        gate_ece = pick(max_ece, defaults, "max_ece", None)
        baseline_path = pick(baseline, defaults, "baseline", None)
        increase = pick(max_increase, defaults, "max_increase", None)
        for option, value in (("--max-ece", gate_ece), ("--max-increase", increase)):
            if value is not None and not 0 <= value <= 1:
                raise InputError(f"{option} must be a number between 0 and 1, got {value}")
        if max_increase is not None and baseline_path is None:
            raise InputError("--max-increase needs --baseline OLD.json (an earlier `calibscope ece --json` output)")
        base = read_baseline(Path(baseline_path)) if baseline_path is not None else None
        session = session_from_options(data=data, defaults=defaults, **options)
        models = model_refs(checkpoints, ensemble=ensemble, mc_dropout=mc_dropout, seed=seed)
        results = [run_calibration(session, ref, settings, name=name, baseline=base, n_results=len(models))
                   for name, ref in models]
        gate = ece_gate(results, max_ece=gate_ece, max_increase=increase, baseline=base)
        doc = ece_view.document(results, gate=gate)
        for r in results:
            for w in r.warnings:
                echo_err(f"warning: {r.name}: {w}")
        written = ece_view.write_outputs(out, results, doc) if out is not None else None
        if bins_csv is not None:
            ece_view.write_bins_csv(bins_csv, results)
        if junit is not None:
            ece_view.write_junit(junit, results, gate)
        if log:
            trackers.log_run(log, name="ece", document=doc, figures=ece_view.reliability_figures(results)
                             + ece_view.corp_figures(results))
        if shown == "json":
            ece_view.print_json(doc)
        elif shown == "markdown":
            print(ece_view.markdown(results, gate=gate), end="")
        else:
            ece_view.print_tables(results, written=written, show_all=all_, gate=gate)
        if not gate.passed:
            raise GateFailed("; ".join(c.message for c in gate.checks if not c.passed))
