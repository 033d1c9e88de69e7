"""``calibscope report`` and ``calibscope compare``: every diagnostic of one model, or of several side by side,
in one self-contained HTML file (or the same content as JSON). The sections are computed by
:func:`calibscope.workflows.report.run_report`, which calls the workflow of each command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from calibscope.cli._common import HELP, MODEL_OPTIONS, LogOpt, cli_errors, option_names, with_options
from calibscope.diagnostics.defaults import DEFAULT_EXAMPLES, DEFAULT_TOP
from calibscope.workflows.mi import DEFAULT_DRAWS as MI_DRAWS
from calibscope.workflows.mi import DEFAULT_EXAMPLES as MI_EXAMPLES
from calibscope.workflows.projection import DEFAULT_PER_CLASS
from calibscope.workflows.report import REPORT_BOOTSTRAP

# ----------------------------------------------------------------------------------------------------------
# the options of both commands, declared once
# ----------------------------------------------------------------------------------------------------------

_DATA = typer.Option(None, "--data", "-d", help="Test data: calibration, temperature, selective and OOD sections "
                     "are measured on it. " + HELP["data"], show_default=False)
_TRAIN = typer.Option(None, "--train", help="Training data (with labels): plane projections, logit-gap MI, the "
                      "Hessian of the training loss, and the Mahalanobis OOD score. Without it those sections are "
                      "skipped. Its 'train' split is used when it holds several.", show_default=False)
_VAL = typer.Option(None, "--val", help="Validation data: the temperature is fitted on it (else on --data, which "
                    "is optimistic), the conformal sets are calibrated on it and the calibrators of the calibrate "
                    "section fitted on it (without it those sections are skipped), and it is the projection's "
                    "second column.", show_default=False)
_OOD = typer.Option(None, "--ood-data", help="Out-of-distribution inputs (same input shape, labels ignored) or a "
                    "logits file of the model on them; without it the OOD section is skipped.", show_default=False)
_SECTIONS = typer.Option(None, "--sections", "-s", help="Comma-separated sections to include, in page order: "
                         "calibration, corp, temperature, calibrate, selective, conformal, ood, projection, mi, "
                         "hessian, distill \\[default: all]. The "
                         "summary and the provenance are always there.", show_default=False)
_OUT = typer.Option(None, "--out", "-o", help="The HTML file to write \\[default: report.html / compare.html; with "
                    "--json and no -o, no HTML].", show_default=False)
_JSON = typer.Option(False, "--json", help="Print the report as a versioned JSON document (calibscope/report) to "
                     "stdout: the summary and, per section, the document its own command prints.")
_TITLE = typer.Option(None, "--title", help="Title of the page.", show_default=False)
_FIGURES = typer.Option("auto", "--figures", help="Figures as inline svg, png (data URIs) or auto (png for "
                        "figures dense with marks, svg otherwise; a large svg is also tried as png and the smaller "
                        "kept).")
_BINS = typer.Option(None, "--bins", help="Equal-width confidence bins of ECE \\[default: 15].", show_default=False)
_BOOTSTRAP = typer.Option(REPORT_BOOTSTRAP, "--bootstrap", help="Bootstrap resamples for the confidence intervals "
                          "of the calibration metrics (≥ 200; 0 = no intervals).")
_SEED = typer.Option(0, "--seed", help="Seed of the bootstrap, the MI examples and augmentations, and the "
                     "Hessian subset and probes.")
_MAX_ECE = typer.Option(None, "--max-ece", help="Threshold: a model whose ECE is above it fails (exit 1, after the "
                        "report is written) \\[default: max_ece of \\[tool.calibscope]].", show_default=False)
_MAX_LAMBDA1 = typer.Option(None, "--max-lambda1", help="Threshold: a model whose top Hessian eigenvalue λ1 is "
                            "above it fails (needs --train).", show_default=False)
_CLASSES = typer.Option(None, "--classes", "-c", help="Projection: three classes a,b,c by index or name "
                        "\\[default: the three with most mutual confusion].", show_default=False)
_PER_CLASS = typer.Option(DEFAULT_PER_CLASS, "--per-class", help="Projection: examples per class (0 keeps all).")
_MI_CLASSES = typer.Option(None, "--mi-classes", help="MI: the two classes a,b of the logit gap z_a − z_b "
                           "\\[default: the first two classes of the projection].", show_default=False)
_MI_EXAMPLES = typer.Option(MI_EXAMPLES, "--mi-examples", help="MI: examples per class (Müller et al.: 300).")
_MI_DRAWS = typer.Option(MI_DRAWS, "--mi-draws", help="MI: augmented draws per example (L ≥ 2).")
_MI_AUGMENT = typer.Option(None, "--mi-augment", help="MI: noise:σ (default σ = 0.05), paper, shift or "
                           "shift+noise:σ.", show_default=False)
_MI_SHIFT = typer.Option(None, "--mi-shift", help="MI: largest random shift in pixels \\[default: 4].",
                         show_default=False)
_MI_NO_FLIP = typer.Option(False, "--mi-no-flip", help="MI: no horizontal flips (digits, text).")
_H_EXAMPLES = typer.Option(DEFAULT_EXAMPLES, "--hessian-examples",
                           help="Hessian: size of the seeded subset of --train.")
_H_TOP = typer.Option(DEFAULT_TOP, "--hessian-top", help="Hessian: how many of the largest eigenvalues (λ1…λk).")
_LAYER = typer.Option(None, "--layer", help="Final linear layer whose input is the penultimate activation "
                      "(projection, Mahalanobis) \\[default: the last nn.Linear with num_classes outputs].",
                      show_default=False)


def _shared_options(
    data: Path | None = _DATA, train: Path | None = _TRAIN, val: Path | None = _VAL, ood_data: Path | None = _OOD,
    sections: str | None = _SECTIONS, out: Path | None = _OUT, json_: bool = _JSON, title: str | None = _TITLE,
    figures: str = _FIGURES, bins: int | None = _BINS, bootstrap: int = _BOOTSTRAP, seed: int = _SEED,
    max_ece: float | None = _MAX_ECE, max_lambda1: float | None = _MAX_LAMBDA1, classes: str | None = _CLASSES,
    per_class: int = _PER_CLASS, mi_classes: str | None = _MI_CLASSES, mi_examples: int = _MI_EXAMPLES,
    mi_draws: int = _MI_DRAWS, mi_augment: str | None = _MI_AUGMENT, mi_shift: int | None = _MI_SHIFT,
    mi_no_flip: bool = _MI_NO_FLIP, hessian_examples: int = _H_EXAMPLES, hessian_top: int = _H_TOP,
    layer: str | None = _LAYER, log: LogOpt = None,
) -> None:
    """The options report and compare share (only the signature is used)."""


@with_options(_shared_options, *MODEL_OPTIONS)
def report(checkpoints: list[Path] = typer.Argument(..., help="Checkpoint (.pt2, TorchScript, state_dict, "
                                                    "safetensors) or logits file; several with --ensemble.",
                                                    show_default=False),
           ensemble: bool = typer.Option(False, "--ensemble", help="Report the ensemble of the checkpoints: their "
                                         "softmax probabilities averaged into one model, ensemble(a,b,…). "
                                         "Sections that need one network (projection, MI, Hessian) are skipped "
                                         "with a note."),
           **options: Any) -> None:
    """One self-contained HTML report of a model: summary with verdicts, then calibration (reliability diagram,
    ECE family with bootstrap intervals), temperature scaling, selective risk, OOD detection, plane
    projections, logit-gap MI and top Hessian eigenvalues, then the provenance.

    Sections whose inputs are missing are skipped with a visible note. The page has no scripts and no
    external references; it prints well. --json prints the same content as JSON. Exit codes: 0 ok, 1 a
    threshold failed (the report is still written), 2 bad input.

    Examples:

      calibscope report model.pt2 --data test.npz --val val.npz --train train.npz -o report.html

      calibscope report model.pt2 --data test.npz --sections calibration,temperature --max-ece 0.05

      calibscope report test_logits.npz --json > report.json
    """
    with cli_errors():
        from calibscope.cli._common import one_model

        _run("report", [one_model(checkpoints, ensemble=ensemble)[1]], options)


@with_options(_shared_options, *MODEL_OPTIONS)
def compare(checkpoints: list[Path] = typer.Argument(..., help="Two or more checkpoints (or logits files), one "
                                                     "column each, e.g. hard targets, label smoothing and SAM.",
                                                     show_default=False),
            ensemble: bool = typer.Option(False, "--ensemble", help="Add a column for the ensemble of the "
                                          "checkpoints: their softmax probabilities averaged into one model, "
                                          "ensemble(a,b,…). Sections that need one network (projection, MI, "
                                          "Hessian) leave it out with a note."),
            **options: Any) -> None:
    """The report's sections with several models side by side: tables with one column per model, figures on
    shared axes (e.g. Müller et al.'s hard targets vs label smoothing vs temperature scaling, SAM's SGD vs SAM).

    Exit codes: 0 ok, 1 a threshold failed (the page is still written), 2 bad input.

    Examples:

      calibscope compare hard.pt2 smooth.pt2 sam.pt2 --data test.npz --val val.npz --train train.npz -o compare.html

      calibscope compare a.pt2 b.pt2 --data test.npz --sections calibration,temperature,hessian --train train.npz

      calibscope compare a.pt2 b.pt2 c.pt2 --ensemble --data test.npz --ood-data ood.npz
    """
    with cli_errors():
        models: list[Any] = list(checkpoints)
        if ensemble:
            from calibscope.workflows.ensemble import Predictive

            models.append(Predictive(tuple(checkpoints)))
        _run("compare", models, options)


def _prefixed(prefix: str, make):
    """``make()``, its argument errors worded with ``prefix`` (``draws`` → ``--mi-draws``)."""
    from calibscope.errors import ArgumentError

    try:
        return make()
    except ArgumentError as exc:
        exc.flag_prefix = prefix
        raise


def _settings(o: dict[str, Any], defaults):
    from calibscope.cli._common import pick
    from calibscope.diagnostics.defaults import DEFAULT_BINS
    from calibscope.errors import InputError
    from calibscope.workflows.calibrate import CalibrateSettings
    from calibscope.workflows.calibration import DEFAULT_NORM, CalibrationSettings, CorpSettings
    from calibscope.workflows.hessian import HessianSettings
    from calibscope.workflows.mi import MiSettings
    from calibscope.workflows.projection import ProjectionSettings
    from calibscope.workflows.report import ReportSettings, parse_sections

    sections = parse_sections(o["sections"])
    if o["max_ece"] is not None and "calibration" not in sections:
        raise InputError("--max-ece needs the calibration section (add it to --sections)")
    seed = o["seed"]
    return ReportSettings(
        sections=sections,
        calibration=CalibrationSettings(n_bins=pick(o["bins"], defaults, "bins", DEFAULT_BINS),
                                        norm=pick(None, defaults, "norm", DEFAULT_NORM), bootstrap=o["bootstrap"],
                                        seed=seed),
        projection=ProjectionSettings(classes=o["classes"], per_class=o["per_class"]),
        mi=_prefixed("mi_", lambda: MiSettings(classes=o["mi_classes"], examples=o["mi_examples"],
                                               draws=o["mi_draws"], augment=o["mi_augment"], shift=o["mi_shift"],
                                               flip=not o["mi_no_flip"], seed=seed)),
        hessian=_prefixed("hessian_", lambda: HessianSettings(top=o["hessian_top"], examples=o["hessian_examples"],
                                                              seed=seed)),
        corp=CorpSettings(seed=seed), calibrate=CalibrateSettings(methods=("all",), seed=seed),
        max_ece=pick(o["max_ece"], defaults, "max_ece", None), max_lambda1=o["max_lambda1"])


def _check_paths(command: str, o: dict[str, Any]) -> Path | None:
    """The HTML file to write (None: --json alone), checked with every input path before anything runs."""
    from calibscope.errors import InputError

    if o["figures"] not in ("auto", "svg", "png"):
        raise InputError(f"--figures must be auto, svg or png, got '{o['figures']}'")
    out = o["out"]
    if out is None and not o["json_"]:
        out = Path(f"{command}.html")
    if out is not None:
        if out.is_dir():
            raise InputError(f"-o '{out}' is a folder; name the HTML file to write, e.g. {out / (command + '.html')}")
        from calibscope.render.atomic import check_destination

        check_destination(out, "-o")  # its folder exists and is writable
    for role in ("data", "train", "val", "ood_data"):
        path = o[role]
        if path is not None and not Path(path).exists():
            raise InputError(f"--{role.replace('_', '-')} '{path}' does not exist")
    return out


def _run(command: str, checkpoints: list[Path], o: dict[str, Any]) -> None:
    import sys

    from calibscope.cli._common import echo_err, project_defaults, session_from_options
    from calibscope.errors import GateFailed
    from calibscope.render import report_html, trackers
    from calibscope.render.json_doc import dumps
    from calibscope.workflows.report import run_report

    log = trackers.check_trackers(o["log"])
    defaults = project_defaults()
    settings = _settings(o, defaults)
    out = _check_paths(command, o)
    model = {name: o[name] for name in option_names(*MODEL_OPTIONS)}
    session = session_from_options(data=o["data"], defaults=defaults, layer=o["layer"], **model)
    verbose = sys.stderr.isatty()

    def progress(key: str) -> None:
        if verbose:
            echo_err(f"{command}: {report_html.SECTIONS[key].lower()} …")

    report = run_report(session, checkpoints, settings, val=o["val"], train=o["train"], ood_data=o["ood_data"],
                        command=command, title=o["title"], extra_settings={"figures": o["figures"]},
                        progress=progress)
    doc = report_html.document(report) if o["json_"] or log else None
    if log:
        trackers.log_run(log, name=command, document=doc)
    written = report_html.write_report(out, report, figures=o["figures"]) if out is not None else None
    if o["json_"]:
        print(dumps(doc))
        for s in report.sections:
            if s.status == "skipped":
                echo_err(f"note: {s.key} skipped: {s.note}")
    else:
        report_html.print_summary(report, written=written)
    if report.passed is False:
        raise GateFailed("; ".join(c.message for c in report.checks if not c.passed))
