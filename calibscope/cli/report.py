"""``calibscope report`` and ``calibscope compare``: every diagnostic of one model, or of several side by side,
in one self-contained HTML file (or the same content as JSON).

Each section makes the library calls its own command makes, with that command's defaults, so the numbers in
the page are those of ``calibscope ece``, ``temperature``, ``selective``, ``ood``, ``project``, ``mi`` and
``hessian``. A section whose inputs are missing (no ``--train`` for the projection, MI and Hessian; no
``--ood-data``; a logits file where a model must run) is skipped with a visible note, as is one whose data
cannot be used (the one-line reason is shown). Models run once per data set through the output cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from calibscope.cli._common import HELP, cli_errors

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.cli._common import ModelInputs
    from calibscope.inference.outputs import Outputs
    from calibscope.loading.types import Checkpoint
    from calibscope.render.report_html import Section

SECTION_KEYS = ("calibration", "temperature", "selective", "ood", "projection", "mi", "hessian")
MI_REPETITIONS = 3  # the default of `calibscope mi`
SELECTIVE_COVERAGES = (0.8, 0.9, 0.95)  # the default of `calibscope selective`

# ----------------------------------------------------------------------------------------------------------
# options shared by both commands
# ----------------------------------------------------------------------------------------------------------

_DATA = typer.Option(None, "--data", "-d", help="Test data: calibration, temperature, selective and OOD sections "
                     "are measured on it. " + HELP["data"], show_default=False)
_TRAIN = typer.Option(None, "--train", help="Training data (with labels): plane projections, logit-gap MI, the "
                      "Hessian of the training loss, and the Mahalanobis OOD score. Without it those sections are "
                      "skipped. Its 'train' split is used when it holds several.", show_default=False)
_VAL = typer.Option(None, "--val", help="Validation data: the temperature is fitted on it (else on --data, which "
                    "is optimistic) and it is the projection's second column.", show_default=False)
_OOD = typer.Option(None, "--ood-data", help="Out-of-distribution inputs (same input shape, labels ignored) or a "
                    "logits file of the model on them; without it the OOD section is skipped.", show_default=False)
_SECTIONS = typer.Option(None, "--sections", "-s", help="Comma-separated sections to include, in page order: "
                         "calibration, temperature, selective, ood, projection, mi, hessian \\[default: all]. The "
                         "summary and the provenance are always there.", show_default=False)
_OUT = typer.Option(None, "--out", "-o", help="The HTML file to write \\[default: report.html / compare.html; with "
                    "--json and no -o, no HTML].", show_default=False)
_JSON = typer.Option(False, "--json", help="Print the report as a versioned JSON document (calibscope/report) to "
                     "stdout: the summary and, per section, the document its own command prints.")
_TITLE = typer.Option(None, "--title", help="Title of the page.", show_default=False)
_FIGURES = typer.Option("auto", "--figures", help="Figures as inline svg, png (data URIs) or auto (whichever is "
                        "smaller, per figure).")
_BINS = typer.Option(None, "--bins", help="Equal-width confidence bins of ECE \\[default: 15].", show_default=False)
_BOOTSTRAP = typer.Option(200, "--bootstrap", help="Bootstrap resamples for the confidence intervals of the "
                          "calibration metrics (≥ 200; 0 = no intervals).")
_SEED = typer.Option(0, "--seed", help="Seed of the bootstrap, the MI examples and augmentations, and the "
                     "Hessian subset and probes.")
_MAX_ECE = typer.Option(None, "--max-ece", help="Threshold: a model whose ECE is above it fails (exit 1, after the "
                        "report is written) \\[default: max_ece of \\[tool.calibscope]].", show_default=False)
_MAX_LAMBDA1 = typer.Option(None, "--max-lambda1", help="Threshold: a model whose top Hessian eigenvalue λ1 is "
                            "above it fails (needs --train).", show_default=False)
_CLASSES = typer.Option(None, "--classes", "-c", help="Projection: three classes a,b,c by index or name "
                        "\\[default: the three with most mutual confusion].", show_default=False)
_PER_CLASS = typer.Option(100, "--per-class", help="Projection: examples per class (0 keeps all).")
_MI_CLASSES = typer.Option(None, "--mi-classes", help="MI: the two classes a,b of the logit gap z_a − z_b "
                           "\\[default: the first two classes of the projection].", show_default=False)
_MI_EXAMPLES = typer.Option(300, "--mi-examples", help="MI: examples per class (Müller et al.: 300).")
_MI_DRAWS = typer.Option(5, "--mi-draws", help="MI: augmented draws per example (L ≥ 2).")
_MI_AUGMENT = typer.Option(None, "--mi-augment", help="MI: noise:σ (default σ = 0.05), paper, shift or shift+noise:σ.",
                           show_default=False)
_MI_SHIFT = typer.Option(None, "--mi-shift", help="MI: largest random shift in pixels \\[default: 4].",
                         show_default=False)
_MI_NO_FLIP = typer.Option(False, "--mi-no-flip", help="MI: no horizontal flips (digits, text).")
_H_EXAMPLES = typer.Option(4096, "--hessian-examples", help="Hessian: size of the seeded subset of --train.")
_H_TOP = typer.Option(5, "--hessian-top", help="Hessian: how many of the largest eigenvalues (λ1…λk).")
_LAYER = typer.Option(None, "--layer", help="Final linear layer whose input is the penultimate activation "
                      "(projection, Mahalanobis) \\[default: the last nn.Linear with num_classes outputs].",
                      show_default=False)
_ARCH = typer.Option(None, "--arch", help=HELP["arch"], show_default=False)
_ARCH_KWARGS = typer.Option(None, "--arch-kwargs", help=HELP["arch_kwargs"], show_default=False)
_TRUST = typer.Option(False, "--trust", help=HELP["trust"])
_DEVICE = typer.Option(None, "--device", help=HELP["device"] + " \\[default: auto]", show_default=False)
_PRECISION = typer.Option(None, "--precision", help=HELP["precision"], show_default=False)
_BATCH_SIZE = typer.Option(None, "--batch-size", "-b", help=HELP["batch_size"] + " \\[default: 1024]",
                           show_default=False)
_LIMIT = typer.Option(None, "--limit", help="Use only the first N examples of each data set.", show_default=False)
_MEAN = typer.Option(None, "--mean", help=HELP["mean"], show_default=False)
_STD = typer.Option(None, "--std", help=HELP["std"], show_default=False)
_SPLIT = typer.Option(None, "--split", help=HELP["split"] + " (of --data)", show_default=False)
_LABEL_COLUMN = typer.Option(None, "--label-column", help=HELP["label_column"], show_default=False)
_NO_CACHE = typer.Option(False, "--no-cache", help=HELP["no_cache"])


def report(
    checkpoint: Path = typer.Argument(..., help="Checkpoint (.pt2, TorchScript, state_dict, safetensors) or logits "
                                      "file.", show_default=False),
    data: Path | None = _DATA, train: Path | None = _TRAIN, val: Path | None = _VAL, ood_data: Path | None = _OOD,
    sections: str | None = _SECTIONS, out: Path | None = _OUT, json_: bool = _JSON, title: str | None = _TITLE,
    figures: str = _FIGURES, bins: int | None = _BINS, bootstrap: int = _BOOTSTRAP, seed: int = _SEED,
    max_ece: float | None = _MAX_ECE, max_lambda1: float | None = _MAX_LAMBDA1, classes: str | None = _CLASSES,
    per_class: int = _PER_CLASS, mi_classes: str | None = _MI_CLASSES, mi_examples: int = _MI_EXAMPLES,
    mi_draws: int = _MI_DRAWS, mi_augment: str | None = _MI_AUGMENT, mi_shift: int | None = _MI_SHIFT,
    mi_no_flip: bool = _MI_NO_FLIP, hessian_examples: int = _H_EXAMPLES, hessian_top: int = _H_TOP,
    layer: str | None = _LAYER, arch: str | None = _ARCH, arch_kwargs: str | None = _ARCH_KWARGS,
    trust: bool = _TRUST, device: str | None = _DEVICE, precision: str | None = _PRECISION,
    batch_size: int | None = _BATCH_SIZE, limit: int | None = _LIMIT, mean: str | None = _MEAN,
    std: str | None = _STD, split: str | None = _SPLIT, label_column: str | None = _LABEL_COLUMN,
    no_cache: bool = _NO_CACHE,
) -> None:
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
        _run("report", [checkpoint], locals())


def compare(
    checkpoints: list[Path] = typer.Argument(..., help="Two or more checkpoints (or logits files), one column "
                                             "each, e.g. hard targets, label smoothing and SAM.",
                                             show_default=False),
    data: Path | None = _DATA, train: Path | None = _TRAIN, val: Path | None = _VAL, ood_data: Path | None = _OOD,
    sections: str | None = _SECTIONS, out: Path | None = _OUT, json_: bool = _JSON, title: str | None = _TITLE,
    figures: str = _FIGURES, bins: int | None = _BINS, bootstrap: int = _BOOTSTRAP, seed: int = _SEED,
    max_ece: float | None = _MAX_ECE, max_lambda1: float | None = _MAX_LAMBDA1, classes: str | None = _CLASSES,
    per_class: int = _PER_CLASS, mi_classes: str | None = _MI_CLASSES, mi_examples: int = _MI_EXAMPLES,
    mi_draws: int = _MI_DRAWS, mi_augment: str | None = _MI_AUGMENT, mi_shift: int | None = _MI_SHIFT,
    mi_no_flip: bool = _MI_NO_FLIP, hessian_examples: int = _H_EXAMPLES, hessian_top: int = _H_TOP,
    layer: str | None = _LAYER, arch: str | None = _ARCH, arch_kwargs: str | None = _ARCH_KWARGS,
    trust: bool = _TRUST, device: str | None = _DEVICE, precision: str | None = _PRECISION,
    batch_size: int | None = _BATCH_SIZE, limit: int | None = _LIMIT, mean: str | None = _MEAN,
    std: str | None = _STD, split: str | None = _SPLIT, label_column: str | None = _LABEL_COLUMN,
    no_cache: bool = _NO_CACHE,
) -> None:
    """The report's sections with several models side by side: tables with one column per model, figures on
    shared axes (e.g. Müller et al.'s hard targets vs label smoothing vs temperature scaling, SAM's SGD vs SAM).

    Exit codes: 0 ok, 1 a threshold failed (the page is still written), 2 bad input.

    Examples:

      calibscope compare hard.pt2 smooth.pt2 sam.pt2 --data test.npz --val val.npz --train train.npz -o compare.html

      calibscope compare a.pt2 b.pt2 --data test.npz --sections calibration,temperature,hessian --train train.npz
    """
    with cli_errors():
        _run("compare", list(checkpoints), locals())


# ----------------------------------------------------------------------------------------------------------
# option checks (before anything is loaded)
# ----------------------------------------------------------------------------------------------------------


def _parse_sections(text: str | None) -> tuple[str, ...]:
    from calibscope.errors import InputError

    if text is None or text.strip().lower() in ("", "all"):
        return SECTION_KEYS
    aliases = {"ece": "calibration", "projections": "projection", "project": "projection", "eigenvalues": "hessian",
               "risk-coverage": "selective"}
    wanted = []
    for part in text.replace(" ", "").lower().split(","):
        if not part:
            continue
        key = aliases.get(part, part)
        if key not in SECTION_KEYS:
            raise InputError(f"--sections: unknown section '{part}'; choose from {', '.join(SECTION_KEYS)} (or all)")
        if key not in wanted:
            wanted.append(key)
    if not wanted:
        raise InputError("--sections names no section; choose from " + ", ".join(SECTION_KEYS))
    return tuple(k for k in SECTION_KEYS if k in wanted)


@dataclass
class _Options:
    command: str
    sections: tuple[str, ...]
    out: Path | None
    json: bool
    figures: str
    n_bins: int
    bootstrap: int
    seed: int
    headline: str
    max_ece: float | None
    max_lambda1: float | None
    per_class: int
    mi_examples: int
    mi_draws: int
    hessian_examples: int
    hessian_top: int
    raw: dict[str, Any] = field(default_factory=dict)


def _check_options(command: str, n_checkpoints: int, o: dict[str, Any], defaults) -> _Options:
    from calibscope.cli._common import pick
    from calibscope.errors import InputError
    from calibscope.render.ece_view import HEADLINE

    if command == "compare" and n_checkpoints < 2:
        raise InputError("compare needs at least two checkpoints (for one, use `calibscope report`)")
    sections = _parse_sections(o["sections"])
    if o["figures"] not in ("auto", "svg", "png"):
        raise InputError(f"--figures must be auto, svg or png, got '{o['figures']}'")
    n_bins = pick(o["bins"], defaults, "bins", 15)
    if n_bins < 1:
        raise InputError(f"--bins must be a positive integer, got {n_bins}")
    if o["bootstrap"] != 0 and o["bootstrap"] < 200:
        raise InputError(f"--bootstrap needs at least 200 resamples for a 95 % interval, got {o['bootstrap']} "
                         "(0 turns it off)")
    for name, least in (("seed", 0), ("per_class", 0), ("mi_examples", 1), ("mi_draws", 2),
                        ("hessian_examples", 1), ("hessian_top", 1)):
        if o[name] < least:
            option = "--" + name.replace("_", "-")
            raise InputError(f"{option} must be at least {least}, got {o[name]}")
    max_ece = pick(o["max_ece"], defaults, "max_ece", None)
    if max_ece is not None and not 0 <= max_ece <= 1:
        raise InputError(f"--max-ece must be a number between 0 and 1, got {max_ece}")
    if o["max_ece"] is not None and "calibration" not in sections:
        raise InputError("--max-ece needs the calibration section (add it to --sections)")
    max_lambda1 = o["max_lambda1"]
    if max_lambda1 is not None:
        if not max_lambda1 > 0:
            raise InputError(f"--max-lambda1 must be a positive number, got {max_lambda1}")
        if o["train"] is None or "hessian" not in sections:
            raise InputError("--max-lambda1 needs the Hessian section: pass --train TRAIN (and keep hessian in "
                             "--sections)")
    norm = pick(None, defaults, "norm", "l1")
    out = o["out"]
    if out is None and not o["json_"]:
        out = Path(f"{command}.html")
    if out is not None:
        if out.is_dir():
            raise InputError(f"-o '{out}' is a folder; name the HTML file to write, e.g. {out / (command + '.html')}")
        if not out.parent.is_dir():
            raise InputError(f"cannot write '{out}': the folder '{out.parent}' does not exist")
    for role in ("data", "train", "val", "ood_data"):
        path = o[role]
        if path is not None and not Path(path).exists():
            flag = "--" + role.replace("_", "-")
            raise InputError(f"{flag} '{path}' does not exist")
    return _Options(command=command, sections=sections, out=out, json=o["json_"], figures=o["figures"],
                    n_bins=n_bins, bootstrap=o["bootstrap"], seed=o["seed"], headline=HEADLINE.get(norm, "ece"),
                    max_ece=max_ece, max_lambda1=max_lambda1, per_class=o["per_class"],
                    mi_examples=o["mi_examples"], mi_draws=o["mi_draws"], hessian_examples=o["hessian_examples"],
                    hessian_top=o["hessian_top"], raw=o)


# ----------------------------------------------------------------------------------------------------------
# the models and their outputs, each computed once
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Model:
    name: str
    path: Path
    checkpoint: Checkpoint
    outputs: Outputs  # on the test data

    @property
    def is_logits(self) -> bool:
        from calibscope.loading.types import LogitsCheckpoint

        return isinstance(self.checkpoint, LogitsCheckpoint)


class _Context:
    """The parsed options, the data sets and every model's outputs (computed on first use, then kept)."""

    def __init__(self, options: _Options, defaults):
        from calibscope.cli._common import ModelInputs

        o = options.raw
        self.options = options
        self.common = dict(label_column=o["label_column"], limit=o["limit"], arch=o["arch"],
                           arch_kwargs=o["arch_kwargs"], trust=o["trust"], device=o["device"],
                           precision=o["precision"], batch_size=o["batch_size"], mean=o["mean"], std=o["std"],
                           no_cache=o["no_cache"], defaults=defaults, layer=o["layer"])
        self.ood_path: Path | None = o["ood_data"] if "ood" in options.sections else None
        self.train_path: Path | None = o["train"]
        # Mahalanobis (like `calibscope ood --train`) needs penultimate features on the test and OOD data
        features = self.ood_path is not None and self.train_path is not None
        self.test = ModelInputs(data=o["data"], split=o["split"], capture_features=features, **self.common)
        self.val = self._inputs(o["val"], "val")
        self.train = self._inputs(o["train"], "train")
        self.models: list[_Model] = []
        self._outputs: dict[tuple[str, str], Outputs] = {}
        self._choice = None

    def _inputs(self, path: Path | None, prefer_split: str) -> ModelInputs | None:
        """Inputs with features for a second data set: its ``prefer_split`` where the source holds several."""
        from calibscope.cli._common import ModelInputs
        from calibscope.errors import InputError

        if path is None:
            return None
        try:
            inputs = ModelInputs(data=path, split=prefer_split, capture_features=True, **self.common)
            inputs.dataset  # noqa: B018 - load now to learn whether the split exists
            return inputs
        except InputError:
            pass
        inputs = ModelInputs(data=path, split=None, capture_features=True, **self.common)
        inputs.dataset  # noqa: B018 - load errors surface here, before any model runs
        return inputs

    def load_models(self, checkpoints: list[Path]) -> None:
        from calibscope.cli._common import display_names
        from calibscope.errors import InputError

        for name, path in zip(display_names(checkpoints), checkpoints, strict=True):
            outputs, checkpoint = self.test.outputs(path)
            if outputs.labels is None:
                raise InputError(f"the test data of '{path}' has no labels; the report measures calibration "
                                 "against them")
            self.models.append(_Model(name, path, checkpoint, outputs))

    def outputs_on(self, model: _Model, role: str) -> Outputs:
        """The model's outputs (with penultimate features) on ``role`` = ``"val"`` or ``"train"``."""
        from calibscope.inference.pipeline import compute_outputs

        key = (model.name, role)
        if key not in self._outputs:
            inputs = self.val if role == "val" else self.train
            assert inputs is not None
            self._outputs[key] = compute_outputs(model.checkpoint, inputs.dataset, inputs.options,
                                                 use_cache=inputs.use_cache)
        return self._outputs[key]

    def runnable(self) -> list[_Model]:
        return [m for m in self.models if not m.is_logits]

    def class_names(self) -> tuple[str, ...] | None:
        from calibscope.cli.mi import _metadata_class_names

        dataset = self.train.dataset if self.train is not None else self.test.dataset
        names = dataset.class_names if dataset is not None else None
        if names is None:
            names = next((_metadata_class_names(m.checkpoint.metadata) for m in self.runnable()
                          if _metadata_class_names(m.checkpoint.metadata)), None)
        return names

    def class_choice(self):
        """The projection's three classes (``--classes``, else the most mutually confused on the validation
        data, else the training data, pooled over the models), as ``calibscope project`` chooses them."""
        if self._choice is not None:
            return self._choice
        import torch

        from calibscope.diagnostics.projection import most_confused_classes, resolve_classes
        from calibscope.errors import InputError
        from calibscope.render.projection_view import ClassChoice

        models = self.runnable()
        if not models or self.train is None:
            raise InputError("choosing the classes needs a model and --train")
        role = "val" if self.val is not None else "train"
        per_model = [self.outputs_on(m, role) for m in models]
        ks = {int(o.logits.shape[1]) for o in per_model}
        if len(ks) > 1:
            raise InputError(f"the models have different numbers of classes ({sorted(ks)}); compare models of the "
                             "same task")
        k = ks.pop()
        names = self.class_names()
        if names is not None and len(names) != k:
            names = None
        spec = self.options.raw["classes"]
        if spec is not None:
            indices, picked_on = resolve_classes(spec, k, names), None
        else:
            inputs = self.val if role == "val" else self.train
            indices = most_confused_classes(torch.cat([o.logits for o in per_model]),
                                            torch.cat([o.labels for o in per_model]))
            picked_on = str(inputs.data_path) + (f", pooled over {len(models)} models" if len(models) > 1 else "")
        self._choice = ClassChoice(indices, tuple(names[i] if names else str(i) for i in indices), picked_on)
        return self._choice


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _per_model(models: list[_Model], fn, *, needs_model: bool = False, why: str = "") -> tuple[list, list[str]]:
    """``fn(model)`` for each model; a logits file (when a model must run) or an input error leaves that model
    out with a note."""
    from calibscope.errors import InputError

    results, notes = [], []
    for m in models:
        if needs_model and m.is_logits:
            notes.append(f"{m.name} is a logits file: {why or 'this section runs the model itself'}")
            continue
        try:
            results.append(fn(m))
        except InputError as exc:
            notes.append(f"{m.name}: {_one_line(exc)}")
    return results, notes


def _outcome(key: str, results: list, notes: list[str], make_document) -> Section:
    from calibscope.render.report_html import Section

    if not results:
        return Section(key, "skipped", note="; ".join(notes) or "nothing to measure")
    return Section(key, "ok", results=results, document=make_document(results), notes=tuple(notes))


# ----------------------------------------------------------------------------------------------------------
# the sections: the calls of each command, with its defaults
# ----------------------------------------------------------------------------------------------------------


def _calibration(ctx: _Context) -> Section:
    """As ``calibscope ece --all --bootstrap B --seed S``."""
    from calibscope.diagnostics.calibration import calibration_metrics
    from calibscope.render import ece_view

    o = ctx.options

    def one(m: _Model):
        metrics = calibration_metrics(m.outputs.logits, m.outputs.labels, n_bins=o.n_bins, bootstrap=o.bootstrap,
                                      seed=o.seed)
        return ece_view.EceResult(m.name, m.path, m.checkpoint.format, metrics.report, m.outputs.meta,
                                  metrics=metrics, headline=o.headline, warnings=tuple(metrics.warnings))

    results, notes = _per_model(ctx.models, one)
    return _outcome("calibration", results, notes, lambda rs: ece_view.document(rs, gate=None))


def _temperature(ctx: _Context) -> Section:
    """As ``calibscope temperature CKPT --data VAL --apply TEST`` (or ``--data TEST`` without --val)."""
    from calibscope.diagnostics.calibration import calibration_metrics
    from calibscope.diagnostics.temperature import apply_temperature, fit_temperature, temperature_sweep
    from calibscope.render import temperature_view as view

    n_bins = ctx.options.n_bins
    test_source = ctx.test.data_path
    notes: list[str] = []

    def one(m: _Model):
        held_out = ctx.val is not None and not m.is_logits
        if ctx.val is not None and m.is_logits:
            notes.append(f"{m.name} is a logits file: its temperature is fitted on its own (test) logits, not on "
                         "--val")
        fit_outputs = ctx.outputs_on(m, "val") if held_out else m.outputs
        fit_source = str(ctx.val.data_path) if held_out else str(test_source if test_source is not None else m.path)
        nll_fit = fit_temperature(fit_outputs.logits, fit_outputs.labels, objective="nll")
        ece_fit = fit_temperature(fit_outputs.logits, fit_outputs.labels, objective="ece", n_bins=n_bins)
        t = nll_fit.temperature

        def evaluate(z, y, source, meta):
            return view.Evaluation(
                source=source, fingerprint=view.data_fingerprint(meta),
                before=calibration_metrics(z, y, n_bins=n_bins),
                after=calibration_metrics(apply_temperature(z, t), y, n_bins=n_bins),
                sweep=temperature_sweep(z, y, n_bins=n_bins))

        fit_eval = evaluate(fit_outputs.logits, fit_outputs.labels, fit_source, fit_outputs.meta)
        apply_eval, warnings = None, []
        if held_out:
            apply_eval = evaluate(m.outputs.logits, m.outputs.labels, str(test_source), m.outputs.meta)
            if view.same_data(fit_eval.fingerprint, apply_eval.fingerprint):
                warnings.append("--val is the test data (same content hash): the numbers after scaling are not "
                                "held-out")
        return view.TemperatureResult(
            name=m.name, path=m.path, format=m.checkpoint.format,
            checkpoint_sha256=fit_outputs.meta.get("checkpoint_sha256"), objective="nll", nll_fit=nll_fit,
            ece_fit=ece_fit, fit=fit_eval, apply=apply_eval, inference=fit_outputs.meta, warnings=tuple(warnings))

    results, errors = _per_model(ctx.models, one)
    return _outcome("temperature", results, notes + errors, lambda rs: [view.document(r) for r in rs])


def _selective(ctx: _Context) -> Section:
    """As ``calibscope selective CKPT --data TEST`` (score msp, coverages 0.8, 0.9, 0.95)."""
    from calibscope.diagnostics.selective import selective_report
    from calibscope.render import selective_view

    def one(m: _Model):
        rep = selective_report(m.outputs.logits, m.outputs.labels, score="msp", temperature=1.0,
                               coverages=SELECTIVE_COVERAGES, target_risk=None)
        test = ctx.test.data_path if ctx.test.data_path is not None else m.path
        return selective_view.SelectiveResult(
            name=m.name, path=m.path, format=m.checkpoint.format, data={"test": str(test), "train": None},
            reports=(rep,), inference={"test": m.outputs.meta}, temperature_fit=None)

    results, notes = _per_model(ctx.models, one)
    return _outcome("selective", results, notes, lambda rs: [selective_view.document(r) for r in rs])


def _ood(ctx: _Context) -> Section:
    """As ``calibscope ood CKPT --data TEST --ood-data OOD [--train TRAIN]``."""
    from calibscope.render.report_html import Section

    if ctx.ood_path is None:
        return Section("ood", "skipped", note="no --ood-data given (out-of-distribution inputs, or a logits file of "
                                              "the model on them)")
    from calibscope.cli.ood import fit_train_gaussians, ood_outputs
    from calibscope.diagnostics.ood import LOGIT_SCORES, ood_report
    from calibscope.render import ood_view

    def one(m: _Model):
        mahalanobis = ctx.train_path is not None and not m.is_logits
        names = LOGIT_SCORES + (("mahalanobis",) if mahalanobis else ())
        gaussians, train_meta = None, None
        if mahalanobis:
            gaussians, train_meta = fit_train_gaussians(ctx.train_path, checkpoint=m.checkpoint, inputs=ctx.test,
                                                        shrinkage="ledoit-wolf")
        out = ood_outputs(ctx.ood_path, checkpoint=m.checkpoint, inputs=ctx.test, num_classes=m.outputs.num_classes)
        rep = ood_report(m.outputs.logits, out.logits, scores=names, temperature=1.0,
                         in_features=m.outputs.features, out_features=out.features, gaussians=gaussians)
        test = ctx.test.data_path if ctx.test.data_path is not None else m.path
        return ood_view.OodResult(
            name=m.name, path=m.path, format=m.checkpoint.format,
            data={"in": str(test), "ood": str(ctx.ood_path), "train": str(ctx.train_path) if mahalanobis else None},
            report=rep, inference={"in": m.outputs.meta, "ood": out.meta, **({"train": train_meta}
                                                                             if mahalanobis else {})})

    results, notes = _per_model(ctx.models, one)
    return _outcome("ood", results, notes, lambda rs: [ood_view.document(r) for r in rs])


def _needs_train(key: str, what: str) -> Section:
    from calibscope.render.report_html import Section

    return Section(key, "skipped", note=f"no --train given ({what})")


def _projection(ctx: _Context) -> Section:
    """As ``calibscope project CKPT... --data TRAIN [--val VAL]``."""
    from calibscope.diagnostics.projection import plane_projection
    from calibscope.errors import InputError
    from calibscope.render import projection_view as view
    from calibscope.render.report_html import Section

    if ctx.train is None:
        return _needs_train("projection", "the projection plots training and validation examples")
    sets = [("train", ctx.train)] + ([("val", ctx.val)] if ctx.val is not None else [])
    for label, inputs in sets:
        if inputs.dataset.labels is None:
            return Section("projection", "skipped", note=f"the {label} data has no labels; the projection colours "
                                                         "examples by their true class")
    choice = None

    def one(m: _Model):
        nonlocal choice
        choice = ctx.class_choice()
        splits = []
        for label, inputs in sets:
            outputs = ctx.outputs_on(m, label)
            if outputs.features is None or outputs.weight is None:
                raise InputError("no penultimate features were captured; use the .pt2 or safetensors form of the "
                                 "model, or name the final layer with --layer")
            projection = plane_projection(outputs.features, outputs.labels, outputs.weight, outputs.bias,
                                          choice.indices, per_class=ctx.options.per_class or None)
            splits.append(view.ProjectedSplit(label, inputs.data_path, projection, outputs.meta))
        return view.ProjectionResult(m.name, m.path, m.checkpoint.format,
                                     ctx.outputs_on(m, "train").meta.get("feature_layer"), tuple(splits))

    results, notes = _per_model(ctx.models, one, needs_model=True, why="the projection reads its penultimate layer")
    per_class = ctx.options.per_class or None
    section = _outcome("projection", results, notes, lambda rs: view.document(rs, choice, per_class=per_class))
    if section.status == "ok":
        from dataclasses import replace

        section = replace(section, results=(results, choice))
    return section


def _mi(ctx: _Context) -> Section:
    """As ``calibscope mi CKPT... --data TRAIN --classes a,b --examples N --draws L``."""
    from dataclasses import replace

    from calibscope.cli.mi import _augmentation, _name, _numbers, _parse_classes
    from calibscope.diagnostics.mutual_information import (
        class_pair_examples,
        logit_gap_mutual_information,
        logit_gaps,
    )
    from calibscope.inference.augment import augmented_logits, validate_augmentation, with_checkpoint_normalisation
    from calibscope.render import mi_view
    from calibscope.render.report_html import Section

    if ctx.train is None:
        return _needs_train("mi", "Müller et al. measure the logit-gap MI on training examples")
    o, raw = ctx.options, ctx.options.raw
    dataset = ctx.train.dataset
    if dataset.labels is None:
        return Section("mi", "skipped", note="the training data has no labels; MI picks examples of two classes")
    if not ctx.runnable():
        return Section("mi", "skipped", note="every checkpoint is a logits file: MI runs the model on augmented "
                                             "inputs")
    class_names = ctx.class_names()
    if raw["mi_classes"] is not None:
        pair = _parse_classes(raw["mi_classes"], class_names)
    else:
        indices = ctx.class_choice().indices
        pair = (indices[0], indices[1])
    augmentation = _augmentation(raw["mi_augment"], raw["mi_shift"], raw["mi_no_flip"], dataset=dataset)
    validate_augmentation(augmentation, tuple(dataset.inputs.shape))
    index = class_pair_examples(dataset.labels, pair, per_class=o.mi_examples, seed=o.seed)
    chosen_labels = dataset.labels[index]
    counts = (int((chosen_labels == pair[0]).sum()), int((chosen_labels == pair[1]).sum()))
    chosen = dataset.inputs[index]
    x_values = dict(zip([m.name for m in ctx.models],
                        _numbers([Path(m.name).stem for m in ctx.models], whole=False), strict=True))
    base = replace(ctx.train.options, capture_features=False, layer=None)

    def one(m: _Model):
        options = with_checkpoint_normalisation(base, m.checkpoint.metadata)
        run = augmented_logits(m.checkpoint.module, chosen, augmentation=augmentation, draws=o.mi_draws,
                               repetitions=MI_REPETITIONS, seed=o.seed, options=options)
        estimate = logit_gap_mutual_information(logit_gaps(run.logits, pair))
        provenance = {**run.meta, "checkpoint_sha256": m.checkpoint.sha256, "dataset_sha256": dataset.sha256}
        return mi_view.MiResult(m.name, m.path, m.checkpoint.format, m.name, x_values[m.name], estimate, provenance)

    settings = mi_view.MiSettings(
        classes=pair, class_names=tuple(_name(k, class_names) for k in pair), examples=counts,
        requested_per_class=o.mi_examples, draws=o.mi_draws, repetitions=MI_REPETITIONS,
        augmentation=augmentation.describe(), seed=o.seed, data=str(dataset.source),
        split=dataset.metadata.get("split"))
    results, notes = _per_model(ctx.models, one, needs_model=True, why="MI runs the model on augmented inputs")
    section = _outcome("mi", results, notes, lambda rs: mi_view.document(rs, settings))
    if section.status == "ok":
        section = replace(section, results=(results, settings))
    return section


def _hessian(ctx: _Context) -> Section:
    """As ``calibscope hessian CKPT... --data TRAIN --examples N --top k --seed S``."""
    from calibscope.diagnostics import hessian as hs
    from calibscope.inference.device import resolve_device
    from calibscope.render import hessian_view
    from calibscope.render.report_html import Section

    if ctx.train is None:
        return _needs_train("hessian", "the Hessian is that of the training loss")
    o = ctx.options
    dataset = ctx.train.dataset
    if dataset.labels is None:
        return Section("hessian", "skipped", note="the training data has no labels; the loss needs them")
    target = resolve_device(ctx.train.options.device)

    def one(m: _Model):
        mean_t, std_t = ctx.train.options.mean, ctx.train.options.std
        if mean_t is None and m.checkpoint.metadata.get("mean") is not None:
            mean_t = tuple(map(float, m.checkpoint.metadata["mean"]))
            std_t = tuple(map(float, m.checkpoint.metadata["std"]))
        model = m.checkpoint.module.to(target)
        spectrum = hs.top_hessian_eigenvalues(
            model, dataset.inputs, dataset.labels, top=o.hessian_top, tol=1e-4, examples=o.hessian_examples,
            seed=o.seed, params="all", bn="eval", batch_size=hs.DEFAULT_BATCH_SIZE, max_hvp=200, trace_samples=20,
            per_layer=False, density=False, mean=mean_t, std=std_t)
        meta = {"checkpoint_sha256": m.checkpoint.sha256, "dataset": str(dataset.source),
                "dataset_sha256": dataset.sha256, "normalisation": {"mean": mean_t, "std": std_t}}
        return hessian_view.HessianResult(m.name, m.path, m.checkpoint.format, spectrum, None, meta)

    results, notes = _per_model(ctx.models, one, needs_model=True, why="the Hessian needs the parameters")
    return _outcome("hessian", results, notes, hessian_view.document)


_RUNNERS = {"calibration": _calibration, "temperature": _temperature, "selective": _selective, "ood": _ood,
            "projection": _projection, "mi": _mi, "hessian": _hessian}


# ----------------------------------------------------------------------------------------------------------
# thresholds, provenance, and the run
# ----------------------------------------------------------------------------------------------------------


def _checks(ctx: _Context, sections: list[Section]) -> list:
    """Every configured threshold applied to every model (comparisons only; the numbers come from the sections)."""
    from calibscope.render.report_html import Check

    o = ctx.options
    by_key = {s.key: s for s in sections}
    checks = []
    calibration = by_key.get("calibration")
    if o.max_ece is not None and calibration is not None and calibration.status == "ok":
        label = {"ece": "ECE", "ece_l2": "ECE ℓ2", "mce": "MCE"}.get(o.headline, o.headline)
        for r in calibration.results:
            ok = not r.value > o.max_ece
            checks.append(Check(r.name, "max_ece", r.headline, r.value, o.max_ece, ok,
                                f"{r.name} {label} {r.value:.4f} {'≤' if ok else '>'} --max-ece {o.max_ece:g}"))
    hessian = by_key.get("hessian")
    if o.max_lambda1 is not None and hessian is not None and hessian.status == "ok":
        for r in hessian.results:
            value = r.spectrum.eigenvalues[0]
            ok = not value > o.max_lambda1
            checks.append(Check(r.name, "max_lambda1", "lambda1", value, o.max_lambda1, ok,
                                f"{r.name} λ1 {value:.5g} {'≤' if ok else '>'} --max-lambda1 {o.max_lambda1:g}"))
    return checks


def _dataset_info(inputs: ModelInputs | None) -> dict[str, Any] | None:
    if inputs is None or inputs.data_path is None:
        return None
    d = inputs.dataset
    return {"path": str(inputs.data_path), "sha256": d.sha256, "n": len(d), "format": d.format,
            "split": d.metadata.get("split")}


def _generated() -> str:
    """Now in UTC, or ``SOURCE_DATE_EPOCH`` (reproducible builds) when set."""
    import os
    from datetime import UTC, datetime

    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.fromtimestamp(int(epoch), UTC) if epoch and epoch.isdigit() else datetime.now(UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _provenance(ctx: _Context, sections: list[Section]) -> dict[str, Any]:
    import platform

    import matplotlib
    import numpy
    import torch

    from calibscope import __version__

    versions = {"calibscope": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "numpy": numpy.__version__, "matplotlib": matplotlib.__version__, "platform": platform.platform()}
    if torch.cuda.is_available():
        versions["cuda"] = torch.version.cuda
    inputs = [{"role": f"checkpoint {m.name}", "path": str(m.path), "format": m.checkpoint.format,
               "sha256": m.checkpoint.sha256, "n": None} for m in ctx.models]
    for role, label in (("test", "test data"), ("val", "validation data"), ("train", "training data")):
        info = _dataset_info(getattr(ctx, role))
        if info is not None:
            inputs.append({"role": label, **info})
    ood = next((s for s in sections if s.key == "ood" and s.status == "ok"), None)
    if ood is not None:
        r = ood.results[0]
        meta = r.inference.get("ood", {})
        inputs.append({"role": "OOD data", "path": str(ctx.ood_path), "format": meta.get("dataset_format"),
                       "sha256": meta.get("dataset_sha256") or meta.get("checkpoint_sha256"), "n": r.report.n_out})
    o = ctx.options
    done = {s.key for s in sections if s.status == "ok"}
    seeds = {}
    if "calibration" in done and o.bootstrap:
        seeds["bootstrap"] = o.seed
    if "mi" in done:
        seeds["MI examples and augmentations"] = o.seed
    if "hessian" in done:
        seeds["Hessian subset, Lanczos start, Hutchinson probes"] = o.seed
    models = [{"name": m.name, "checkpoint": str(m.path), "format": m.checkpoint.format,
               "sha256": m.checkpoint.sha256, "inference": m.outputs.meta} for m in ctx.models]
    return {"versions": versions, "inputs": inputs, "models": models, "seeds": seeds}


def _settings(ctx: _Context) -> dict[str, Any]:
    o, raw = ctx.options, ctx.options.raw
    options = ctx.test.options
    return {
        "sections": list(o.sections), "bins": o.n_bins, "bootstrap": o.bootstrap, "seed": o.seed,
        "ece_metric": o.headline, "classes": raw["classes"], "per_class": o.per_class,
        "mi_classes": raw["mi_classes"], "mi_examples": o.mi_examples, "mi_draws": o.mi_draws,
        "mi_repetitions": MI_REPETITIONS, "mi_augment": raw["mi_augment"], "mi_shift": raw["mi_shift"],
        "mi_no_flip": raw["mi_no_flip"], "hessian_examples": o.hessian_examples, "hessian_top": o.hessian_top,
        "device": options.device, "precision": options.precision, "batch_size": options.batch_size,
        "limit": raw["limit"], "layer": raw["layer"], "figures": o.figures,
    }


def _run(command: str, checkpoints: list[Path], raw: dict[str, Any]) -> None:
    import sys

    from calibscope.cli._common import echo_err, project_defaults
    from calibscope.errors import GateFailed
    from calibscope.render import report_html
    from calibscope.render.json_doc import dumps

    defaults = project_defaults()
    options = _check_options(command, len(checkpoints), raw, defaults)
    ctx = _Context(options, defaults)
    ctx.load_models(checkpoints)
    verbose = sys.stderr.isatty()
    sections = []
    for key in options.sections:
        if verbose:
            echo_err(f"{command}: {report_html.SECTIONS[key].lower()} …")
        try:
            section = _RUNNERS[key](ctx)
        except Exception as exc:  # an input error of the whole section: skip it, say why
            from calibscope.errors import InputError

            if not isinstance(exc, InputError):
                raise
            section = report_html.Section(key, "skipped", note=_one_line(exc))
        sections.append(section)

    names = [m.name for m in ctx.models]
    title = raw["title"] or (f"calibscope report: {names[0]}" if command == "report"
                             else "calibscope compare: " + " vs ".join(names))
    checks = _checks(ctx, sections)
    report = report_html.Report(
        command=command, title=title,
        models=tuple(report_html.ModelInfo(m.name, m.path, m.checkpoint.format, m.checkpoint.sha256)
                     for m in ctx.models),
        sections=tuple(sections), checks=tuple(checks),
        thresholds={"max_ece": options.max_ece, "ece_metric": options.headline, "max_lambda1": options.max_lambda1},
        data={"test": _dataset_info(ctx.test), "val": _dataset_info(ctx.val), "train": _dataset_info(ctx.train),
              "ood": None if ctx.ood_path is None else {"path": str(ctx.ood_path)}},
        settings=_settings(ctx), provenance=_provenance(ctx, sections), generated=_generated())

    written = None
    if options.out is not None:
        written = report_html.write_report(options.out, report, figures=options.figures)
    if options.json:
        print(dumps(report_html.document(report)))
        for s in sections:
            if s.status == "skipped":
                echo_err(f"note: {s.key} skipped: {s.note}")
    else:
        report_html.print_summary(report, written=written)
    if report.passed is False:
        raise GateFailed("; ".join(c.message for c in checks if not c.passed))
