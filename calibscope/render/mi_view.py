"""What ``calibscope mi`` shows: a table and a plot of the logit-gap mutual information Î against checkpoint,
and the ``calibscope/mi`` JSON document (``docs/mi.md``).

``results`` is a list of :class:`MiResult` (one per checkpoint, in x-axis order) sharing one
:class:`MiMeasurement`; nothing here computes an estimate. Figures use :class:`matplotlib.figure.Figure`
directly (no pyplot, no global state); matplotlib and rich are imported inside the functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibscope.results import MiMeasurement, MiResult  # noqa: F401 - re-exported (the result types)

MiSettings = MiMeasurement  # the former name

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


__all__ = ["MiResult", "MiMeasurement", "document", "mi_figure", "print_json", "print_tables", "write_outputs"]

ESTIMATE_LABEL = "Î(X; Y)"
CEILING_LABEL = "log N"
LOG2_LABEL = "log 2"
_LINE_COLOR = "#0072B2"
_LN2 = math.log(2.0)


def _class_text(index: int, name: str) -> str:
    return str(index) if name == str(index) else f"{index} ({name})"


# --------------------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------------------


def document(results: Sequence[MiResult], settings: MiMeasurement) -> dict[str, Any]:
    """The ``calibscope/mi`` v1 document (``docs/mi.md``)."""
    from calibscope.render.json_doc import json_document, report_to_dict

    a, b = settings.classes
    payload = {
        "classes": [{"index": a, "name": settings.class_names[0], "examples": settings.examples[0]},
                    {"index": b, "name": settings.class_names[1], "examples": settings.examples[1]}],
        "settings": {
            "n_examples": sum(settings.examples),
            "requested_per_class": settings.requested_per_class,
            "draws": settings.draws,
            "repetitions": settings.repetitions,
            "augmentation": settings.augmentation,
            "seed": settings.seed,
            "data": settings.data,
            "split": settings.split,
        },
        "results": [
            {"name": r.name, "checkpoint": str(r.path), "format": r.format, "label": r.label, "x": r.x,
             "inference": r.inference, **report_to_dict(r.estimate),
             "premise": None if r.check is None else {**report_to_dict(r.check),
                                                      "premise_holds": r.check.premise_holds}}
            for r in results
        ],
        "definition": {
            "gap": "Y = z_a - z_b (logits of the two classes) under L augmented draws of each of N examples",
            "mu": "mu_x = mean of example x's L gaps",
            "sigma2": "pooled within-example variance: sum_x sum_l (y_xl - mu_x)^2 / (N (L - 1))",
            "estimate": "I = 1/(N L) sum_{x,l} [ -(y_xl - mu_x)^2 / (2 sigma2) - log( 1/N sum_x' "
                        "exp(-(y_xl - mu_x')^2 / (2 sigma2)) ) ], nats (bits = nats / ln 2), <= log N",
            "spread": "sample standard deviation of the estimate over the repetitions (null for one)",
            "bias": "upward, about 1/(2L) nats (+0.1 at L = 5) when examples are indistinguishable",
            "reference": "Müller, Kornblith & Hinton 2019, When Does Label Smoothing Help?, Section 4 and "
                         "Appendix A.2",
        },
    }
    return json_document("mi", payload, meta={"command": "mi", "n_checkpoints": len(results)})


def print_json(doc: dict[str, Any]) -> None:
    from calibscope.render.json_doc import dumps

    print(dumps(doc))


# --------------------------------------------------------------------------------------------------------
# figure
# --------------------------------------------------------------------------------------------------------


def series_groups(labels: Sequence[str]) -> dict[str, list[tuple[float, int]]] | None:
    """Several training runs in one call: ``{run: [(epoch, index), …]}`` when the labels are ``<run><number>``
    with at least two runs, each with distinct numbers (``digits_hard_epoch_2``, ``digits_ls_epoch_2``, …);
    else None.

    >>> series_groups(["a_epoch_2.pt", "a_epoch_10.pt", "b_epoch_2.pt"])
    {'a': [(2.0, 0), (10.0, 1)], 'b': [(2.0, 2)]}
    """
    import re

    groups: dict[str, list[tuple[float, int]]] = {}
    for i, label in enumerate(labels):
        stem = re.sub(r"\.[A-Za-z0-9]+$", "", Path(label).name)
        found = re.match(r"^(.*?)[_\-.]*(?:epoch|ep|step|iter)?[_\-.]*(\d+(?:\.\d+)?)$", stem)
        if not found or not found.group(1):
            return None
        groups.setdefault(found.group(1), []).append((float(found.group(2)), i))
    if len(groups) < 2 or any(len({x for x, _ in g}) != len(g) for g in groups.values()):
        return None
    return {k: sorted(v) for k, v in groups.items()}


def _series_figure(results, settings, groups, *, figsize, title) -> Figure:
    """One line per training run: Î against epoch, ± the repetition spread (Müller et al. 2019 §4)."""
    from matplotlib.figure import Figure

    from calibscope.render.figures import series_colors

    ceiling = results[0].estimate.ceiling_nats
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    ax.axhline(ceiling, color="0.35", linestyle="--", linewidth=1.0, label=f"{CEILING_LABEL} = {ceiling:.2f}")
    ax.axhline(_LN2, color="0.35", linestyle=":", linewidth=1.2, label=f"{LOG2_LABEL} = {_LN2:.2f}")
    for (run, points), (color, marker) in zip(groups.items(), series_colors(len(groups)), strict=True):
        xs = [x for x, _ in points]
        ys = [results[i].estimate.nats for _, i in points]
        errs = [results[i].estimate.spread_nats or 0.0 for _, i in points]
        ax.errorbar(xs, ys, yerr=errs if any(errs) else None, color=color, marker=marker, markersize=5,
                    linewidth=1.4, capsize=3, label=f"{ESTIMATE_LABEL} {run}", zorder=3)
    if all(x > 0 for pts in groups.values() for x, _ in pts):
        ax.set_xscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylim(0.0, ceiling * 1.08)
    ax.set_ylabel("Î(X; Y)  [nats]")
    ax.grid(True, linewidth=0.5, alpha=0.35)
    ax.legend(loc="lower left", fontsize="x-small", frameon=True, framealpha=0.9)
    a, b = settings.classes
    ax.set_title(title if title is not None else
                 f"Logit-gap MI over training, classes {_class_text(a, settings.class_names[0])} vs "
                 f"{_class_text(b, settings.class_names[1])}\nN = {sum(settings.examples)}, L = {settings.draws}, "
                 f"{settings.augmentation}", fontsize="small")
    return fig


def mi_figure(
    results: Sequence[MiResult],
    settings: MiMeasurement,
    *,
    figsize: tuple[float, float] = (4.6, 3.4),
    title: str | None = None,
) -> Figure:
    """Î (nats, left axis; bits, right axis) against checkpoint, with error bars of ± the repetition spread,
    the ceiling log N (dashed) and log 2 (dotted: only the class is known).

    The x axis is numeric when every result has ``x`` (e.g. epochs), otherwise one tick per checkpoint in
    order (markers only: separate models are not a series). ``fig.axes[0]`` is the main axes; the estimate's
    artist has a label starting with ``"Î(X; Y)"``.
    """
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("Expected at least one result to plot, but got none")
    groups = series_groups([r.label for r in results])
    if groups is not None:
        return _series_figure(results, settings, groups, figsize=figsize, title=title)
    numeric = all(r.x is not None for r in results)
    order = sorted(range(len(results)), key=lambda i: results[i].x) if numeric else list(range(len(results)))
    xs = [results[i].x if numeric else k for k, i in enumerate(order)]
    ys = [results[i].estimate.nats for i in order]
    errs = [results[i].estimate.spread_nats or 0.0 for i in order]
    ceiling = results[0].estimate.ceiling_nats

    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    ax.axhline(ceiling, color="0.35", linestyle="--", linewidth=1.0, label=f"{CEILING_LABEL} = {ceiling:.2f}")
    ax.axhline(_LN2, color="0.35", linestyle=":", linewidth=1.2, label=f"{LOG2_LABEL} = {_LN2:.2f}")
    has_spread = any(e > 0 for e in errs)
    repetitions = results[0].estimate.n_repetitions
    label = f"{ESTIMATE_LABEL} ± spread ({repetitions} rep.)" if has_spread else ESTIMATE_LABEL
    # a series (epochs) is joined by a line; separate models are not
    ax.errorbar(xs, ys, yerr=errs if has_spread else None, color=_LINE_COLOR, marker="o", markersize=5,
                linewidth=1.4 if numeric else 0.0, elinewidth=1.2, capsize=3, label=label, zorder=3)
    if not numeric:
        ax.set_xticks(xs, [results[i].label for i in order], rotation=30 if len(results) > 3 else 0,
                      ha="right" if len(results) > 3 else "center", fontsize="small")
        ax.set_xlim(-0.5, len(results) - 0.5)
    else:
        ax.set_xlabel("checkpoint")
    ax.set_ylim(0.0, ceiling * 1.08)
    ax.set_ylabel("Î(X; Y)  [nats]")
    secondary = ax.secondary_yaxis("right", functions=(lambda v: v / _LN2, lambda v: v * _LN2))
    secondary.set_ylabel("bits")
    ax.grid(True, linewidth=0.5, alpha=0.35)
    ax.set_axisbelow(True)
    ax.legend(loc="best", fontsize="x-small", frameon=True, framealpha=0.9)
    a, b = settings.classes
    n = sum(settings.examples)
    ax.set_title(title if title is not None else
                 f"Logit-gap MI, classes {_class_text(a, settings.class_names[0])} vs "
                 f"{_class_text(b, settings.class_names[1])}\nN = {n}, L = {settings.draws}, "
                 f"{settings.augmentation}", fontsize="small")
    return fig


# --------------------------------------------------------------------------------------------------------
# files and tables
# --------------------------------------------------------------------------------------------------------


def write_outputs(out: Path, results: Sequence[MiResult], settings: MiMeasurement, doc: dict[str, Any]) -> list[Path]:
    """``out/mi.png``, ``out/mi.svg`` (Î against checkpoint) and ``out/mi.json`` (atomic writes)."""
    from calibscope.render.atomic import atomic_write_text, output_folder
    from calibscope.render.figures import save_figure
    from calibscope.render.json_doc import dumps

    output_folder(out)
    written = save_figure(mi_figure(results, settings), out / "mi")
    written.append(atomic_write_text(out / "mi.json", dumps(doc) + "\n"))
    return written


def _spread(value: float | None) -> str:
    return "—" if value is None else f"± {value:.3f}"


def print_tables(results: Sequence[MiResult], settings: MiMeasurement, *, written: list[Path] | None = None) -> None:
    """One row per checkpoint: Î in nats (± spread) and bits, Î / log N, σ²; the settings in the title."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    a, b = settings.classes
    n_a, n_b = settings.examples
    title = (f"Logit-gap mutual information, classes {_class_text(a, settings.class_names[0])} vs "
             f"{_class_text(b, settings.class_names[1])}: N = {n_a + n_b} ({n_a} + {n_b}) examples × "
             f"L = {settings.draws} draws × {settings.repetitions} repetitions; {settings.augmentation}")
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("Checkpoint")
    table.add_column("Î (nats)", justify="right")
    table.add_column("spread", justify="right")
    table.add_column("Î / log N", justify="right")
    table.add_column("σ² (gap)", justify="right")
    checked = any(r.check is not None for r in results)
    if checked:
        table.add_column("acc aug.", justify="right")
        table.add_column("agree", justify="right")
    for r in results:
        e = r.estimate
        cells = [r.label, f"{e.nats:.4f}", _spread(e.spread_nats),
                 f"{e.nats / e.ceiling_nats:.3f}", f"{e.sigma2:.4g}"]
        if checked:
            c = r.check
            cells += ["—", "—"] if c is None else [
                f"{100 * c.augmented_accuracy:.0f}%",
                f"{100 * c.agreement:.0f}%" + ("" if c.premise_holds else " [red]✗[/red]")]
        table.add_row(*cells)
    console.print(table)
    ceiling = results[0].estimate.ceiling_nats if results else float("nan")
    console.print(f"[dim]ceiling log N = {ceiling:.4f} nats; log 2 = {_LN2:.4f} (only the class is known); "
                  f"with L = {settings.draws} draws Î is biased upwards by about {1 / (2 * settings.draws):.2f} "
                  f"nats (Müller et al. 2019 §4, App. A.2)[/dim]")
    if min(settings.examples) < settings.requested_per_class:
        console.print(f"[dim]{settings.data} has fewer than {settings.requested_per_class} examples of a class: "
                      f"used all ({n_a} + {n_b})[/dim]")
    if written:
        console.print(f"[dim]wrote {len(written)} files to {written[0].parent}/[/dim]")
