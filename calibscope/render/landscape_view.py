"""What ``calibscope landscape`` shows: the loss surface around a model along filter-normalised random directions
(Li et al. 2018, Figs. 5–6), the loss on the straight line between two models (Goodfellow et al. 2015), a
short table, the ``calibscope/landscape`` JSON document and a progress bar.

Nothing here computes a loss: every number comes from :mod:`calibscope.diagnostics.landscape`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibscope.results import LandscapeResult  # noqa: F401 - re-exported (the result type)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["LandscapeResult", "Progress", "document", "line_figure", "print_json", "print_tables",
           "surface_figure", "write_outputs"]

_LOSS_COLOR = "#0072B2"
_ACCURACY_COLOR = "#D55E00"


# --------------------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------------------


def document(r: LandscapeResult) -> dict[str, Any]:
    """The ``calibscope/landscape`` v1 document (``docs/landscape.md``)."""
    from calibscope.render.json_doc import json_document

    s = r.surface
    payload: dict[str, Any] = {
        "name": r.name, "checkpoint": str(r.path), "format": r.format, **r.meta,
        "surface": {
            "dimensions": s.dimensions, "normalisation": s.normalisation, "seed": s.seed,
            "n_examples": s.n_examples, "n_params": s.n_params, "center_loss": s.center_loss,
            "alphas": list(s.alphas), "betas": None if s.betas is None else list(s.betas),
            "loss": _lists(s.loss), "accuracy": _lists(s.accuracy),
        },
        "line": None,
        "definition": {
            "surface": "L(w + alpha d1 [+ beta d2]): mean cross-entropy on a seeded subset of the data, model in "
                       "eval mode; d1, d2 Gaussian directions (seeded, drawn on the CPU) rescaled filter by "
                       "filter to the norm of the weights they perturb, 0 on 1-D parameters (biases, norms) — "
                       "Li, Xu, Taylor, Studer & Goldstein 2018, Section 4",
            "line": "L((1 - t) w_A + t w_B) with floating-point buffers interpolated alike (Goodfellow, Vinyals & "
                    "Saxe 2015); barrier = max_t L(t) - ((1 - t) L(0) + t L(1)) (Frankle et al. 2020)",
        },
    }
    if r.line is not None:
        ln = r.line
        payload["line"] = {"name_b": r.name_b, "checkpoint_b": str(r.path_b), "ts": list(ln.ts),
                           "loss": list(ln.loss), "accuracy": list(ln.accuracy), "distance": ln.distance,
                           "barrier": ln.barrier, "n_examples": ln.n_examples, "n_params": ln.n_params,
                           "seed": ln.seed}
    return json_document("landscape", payload, meta={"command": "landscape"})


def _lists(values: tuple) -> list:
    return [list(v) if isinstance(v, tuple) else v for v in values]


def print_json(doc: dict[str, Any]) -> None:
    from calibscope.render.json_doc import dumps

    print(dumps(doc))


# --------------------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------------------


def _loss_and_accuracy(ax, xs, loss, accuracy, *, label: str):
    """Loss on ``ax`` (left; log scale when it spans more than a factor of 100), accuracy on a twin axis
    (right, dashed)."""
    from matplotlib.ticker import MaxNLocator

    from calibscope.render.figures import label_log_axis

    ax.plot(xs, loss, color=_LOSS_COLOR, linewidth=1.6, marker="o", markersize=2.5, label="loss (mean CE)")
    logarithmic = min(loss) > 0 and max(loss) / min(loss) > 100
    if logarithmic:
        ax.set_yscale("log")
        label_log_axis(ax, "y")
    ax.set_ylabel("Training loss (mean CE" + (", log scale)" if logarithmic else ")"), color=_LOSS_COLOR)
    ax.set_xlabel(label)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.grid(True, linewidth=0.4, alpha=0.35)
    twin = ax.twinx()
    twin.plot(xs, [100 * a for a in accuracy], color=_ACCURACY_COLOR, linewidth=1.2, linestyle="--",
              label="accuracy")
    twin.set_ylabel("Accuracy (%)", color=_ACCURACY_COLOR)
    twin.set_ylim(-2, 102)
    return twin


def surface_figure(r: LandscapeResult, *, figsize: tuple[float, float] | None = None) -> Figure:
    """1-D: loss (left axis) and accuracy (right, dashed) against α. 2-D: filled contours of the loss over
    (α, β) on log-spaced levels, the unperturbed model (α = β = 0) marked with a cross."""
    from matplotlib.figure import Figure

    s = r.surface
    fig = Figure(figsize=figsize or ((5.0, 3.6) if s.dimensions == 1 else (4.6, 4.0)), layout="constrained")
    ax = fig.subplots()
    where = f"{s.n_examples:,} examples, seed {s.seed}"
    if s.dimensions == 1:
        _loss_and_accuracy(ax, s.alphas, s.loss, s.accuracy,
                           label="α (step along a filter-normalised random direction d)")
        ax.axvline(0.0, color="0.4", linestyle=":", linewidth=1.0)
        ax.set_title(f"{r.name}: L(w + αd), L(w) = {s.center_loss:.3g} ({where})", fontsize="small")
        return fig
    import numpy as np
    from matplotlib.colors import LogNorm

    loss = np.asarray(s.loss, dtype=float).T  # rows along β, columns along α (contour's convention)
    lo, hi = float(loss.min()), float(loss.max())
    lo = max(lo, hi * 1e-12, 1e-300)
    levels = np.geomspace(lo, hi, 16) if hi > lo * (1 + 1e-9) else np.array([lo, lo * 1.001])
    filled = ax.contourf(s.alphas, s.betas, np.maximum(loss, lo), levels=levels, norm=LogNorm(lo, hi),
                         cmap="viridis")
    lines = ax.contour(s.alphas, s.betas, np.maximum(loss, lo), levels=levels[::3], colors="white",
                       linewidths=0.6)
    ax.clabel(lines, fontsize="xx-small", fmt=lambda v: f"{v:.2g}")
    ax.plot([0.0], [0.0], marker="x", color="red", markersize=8, markeredgewidth=1.8, linestyle="none")
    fig.colorbar(filled, ax=ax, label="Training loss (mean CE, log colour scale)", format="%.2g")
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("α (direction d₁)")
    ax.set_ylabel("β (direction d₂)")
    ax.set_title(f"{r.name}: L(w + αd₁ + βd₂), filter-normalised\n×: L(w) = {s.center_loss:.3g} ({where})",
                 fontsize="small")
    return fig


def line_figure(r: LandscapeResult, *, figsize: tuple[float, float] = (5.0, 3.6)) -> Figure:
    """Loss (left) and accuracy (right, dashed) along (1 − t) w_A + t w_B; the chord from L(0) to L(1) dotted,
    the barrier in the title."""
    from matplotlib.figure import Figure

    ln = r.line
    if ln is None:
        raise ValueError("Expected a result with a line between two checkpoints (calibscope landscape A B)")
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    _loss_and_accuracy(ax, ln.ts, ln.loss, ln.accuracy, label=f"t: (1 − t)·{r.name} + t·{r.name_b}")
    ax.plot([ln.ts[0], ln.ts[-1]], [ln.loss[0], ln.loss[-1]], color="0.45", linestyle=":", linewidth=1.0)
    ax.set_xticks([0.0, 0.25, 0.5, 0.75, 1.0], [f"0\n{r.name}", "0.25", "0.5", "0.75", f"1\n{r.name_b}"])
    ax.set_title(f"Straight line A → B (‖w_B − w_A‖ = {ln.distance:.3g})\nloss barrier {ln.barrier:.3g} above "
                 "the chord (dotted)", fontsize="small")
    return fig


def write_outputs(out: Path, r: LandscapeResult, doc: dict[str, Any]) -> list[Path]:
    """``out/landscape.png|svg`` (the surface), with B ``out/landscape_line.png|svg``, and
    ``out/landscape.json`` (atomic writes)."""
    from calibscope.render.figures import write_output_set

    figs = {"landscape": surface_figure(r)}
    if r.line is not None:
        figs["landscape_line"] = line_figure(r)
    return write_output_set(out, figs, "landscape.json", doc)


# --------------------------------------------------------------------------------------------------------
# terminal
# --------------------------------------------------------------------------------------------------------


class Progress:
    """``progress(stage, done, total)``: a rich bar per stage on stderr, only when stderr is a terminal."""

    def __init__(self, *, enabled: bool | None = None):
        import sys

        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar = None
        self._tasks: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self._bar.start()
        if stage not in self._tasks:
            self._tasks[stage] = self._bar.add_task(f"loss {stage}", total=total)
        self._bar.update(self._tasks[stage], completed=done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _extremes(xs, values) -> tuple[str, str]:
    i_min = min(range(len(values)), key=values.__getitem__)
    i_max = max(range(len(values)), key=values.__getitem__)
    return f"{values[i_min]:.4g} at {xs[i_min]:+.3g}", f"{values[i_max]:.4g} at {xs[i_max]:+.3g}"


def print_tables(r: LandscapeResult, *, written: list[Path] | None = None) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    s = r.surface
    console.print(f"[bold]{escape(r.name)}[/bold]: training loss L(w) = {s.center_loss:.6g} on "
                  f"{s.n_examples:,} examples, {s.n_params:,} parameters")
    span = f"[{s.alphas[0]:g}, {s.alphas[-1]:g}]"
    if s.dimensions == 1:
        low, high = _extremes(s.alphas, s.loss)
        console.print(f"  1-D slice along a filter-normalised random direction (seed {s.seed}), α ∈ {span}, "
                      f"{len(s.alphas)} points: min {low}, max {high}; at the ends L = {s.loss[0]:.4g} "
                      f"(α = {s.alphas[0]:g}) and {s.loss[-1]:.4g} (α = {s.alphas[-1]:g})")
    else:
        flat = [v for row in s.loss for v in row]
        console.print(f"  2-D slice along two filter-normalised random directions (seed {s.seed}), α, β ∈ "
                      f"{span}, {len(s.alphas)}×{len(s.alphas)} points: min {min(flat):.4g}, "
                      f"max {max(flat):.4g}")
    if 0.0 in s.alphas:
        mid = s.alphas.index(0.0)
        acc0 = s.accuracy[mid] if s.dimensions == 1 else s.accuracy[mid][mid]
        console.print(f"  accuracy at α = 0: {100 * acc0:.2f} %")
    if r.line is not None:
        ln = r.line
        low, high = _extremes(ln.ts, ln.loss)
        console.print(f"[bold]line[/bold] (1 − t)·{escape(r.name)} + t·{escape(str(r.name_b))}, "
                      f"‖w_B − w_A‖ = {ln.distance:.4g}, {len(ln.ts)} points: L(0) = {ln.loss[0]:.6g}, "
                      f"L(1) = {ln.loss[-1]:.6g}; min {low}, max {high}; barrier above the chord "
                      f"{ln.barrier:.4g}")
    if written:
        console.print(f"[dim]wrote {len(written)} files to {escape(str(written[0].parent))}/[/dim]")
