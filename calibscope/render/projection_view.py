"""What ``calibscope project`` shows: the plane-projection figure (Müller et al. 2019, Fig. 1), a table of
cluster statistics, and the ``calibscope/projection`` JSON document.

``results`` is a list of :class:`ProjectionResult` (one per checkpoint, each with one
:class:`~calibscope.diagnostics.projection.PlaneProjection` per data set); nothing here computes a statistic.
Figures use :class:`matplotlib.figure.Figure` directly (no pyplot, no global state).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibscope.results import ClassChoice, ProjectedSplit, ProjectionResult  # noqa: F401 - re-exported (the result types)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from calibscope.diagnostics.projection import PlaneProjection

__all__ = ["ClassChoice", "ProjectedSplit", "ProjectionResult", "document", "print_json", "print_tables",
           "projection_figure", "write_outputs"]

# colour-blind-safe (Okabe–Ito) colours for classes a, b, c
CLASS_COLORS = ("#0072B2", "#E69F00", "#009E73")
TEMPLATE_LABEL = "template"


def class_label(index: int, name: str | None) -> str:
    """``"3"`` when the name is the index itself (or unknown), else ``"3 (cat)"``."""
    return str(index) if name is None or name == str(index) else f"{index} ({name})"


# --------------------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------------------


def _projection_dict(p: PlaneProjection) -> dict[str, Any]:
    from calibscope.render.json_doc import report_to_dict

    return {
        "counts": list(p.counts),
        "templates": p.templates,
        "coordinates": p.coordinates,
        "labels": p.labels,
        "indices": p.indices,
        "statistics": report_to_dict(p.statistics),
    }


def document(results: Sequence[ProjectionResult], choice: ClassChoice, *, per_class: int | None) -> dict[str, Any]:
    """The ``calibscope/projection`` v1 document (``docs/projection.md``)."""
    from calibscope.render.json_doc import json_document

    payload = {
        "classes": [{"index": i, "name": n} for i, n in zip(choice.indices, choice.names, strict=True)],
        "classes_picked_on": choice.picked_on,
        "per_class": per_class,
        "results": [
            {
                "name": r.name,
                "checkpoint": str(r.path),
                "format": r.format,
                "feature_layer": r.feature_layer,
                "splits": [
                    {"split": s.split, "data": str(s.data), "inference": s.inference,
                     **_projection_dict(s.projection)}
                    for s in r.splits
                ],
            }
            for r in results
        ],
        "definition": {
            "templates": "w~_k = [w_k; b_k] (final-layer weight row and bias); x~ = [x; 1]",
            "basis": "orthonormal E of span(w~_b - w~_a, w~_c - w~_a) by QR in float64; first axis from a to b, "
                     "second towards c",
            "origin": "p0 = mean of the three templates",
            "coordinates": "u = E^T (x~ - p0)",
            "relative_spread": "mean over the 3 classes of the mean distance to the class centre, divided by "
                               "the mean distance between the 3 centres (plane: u; full: x)",
            "equidistance": "min / max distance between the class centres",
            "reference": "Müller, Kornblith & Hinton 2019, When Does Label Smoothing Help?, Section 2",
        },
    }
    return json_document("projection", payload, meta={"command": "project", "n_checkpoints": len(results)})


def print_json(doc: dict[str, Any]) -> None:
    from calibscope.render.json_doc import dumps

    print(dumps(doc))


# --------------------------------------------------------------------------------------------------------
# figure
# --------------------------------------------------------------------------------------------------------


def _row_limits(projections: Sequence[PlaneProjection]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Square limits (equal spans) holding every point and template of a row, with a margin."""
    import torch

    points = torch.cat([torch.cat([p.coordinates, p.templates]) for p in projections]).cpu()
    lo, hi = points.min(dim=0).values, points.max(dim=0).values
    centre = (lo + hi) / 2
    half = float((hi - lo).max()) / 2 * 1.08 or 1.0
    return ((float(centre[0]) - half, float(centre[0]) + half), (float(centre[1]) - half, float(centre[1]) + half))


def projection_figure(
    results: Sequence[ProjectionResult],
    choice: ClassChoice,
    *,
    panel_size: float = 3.0,
    point_size: float = 9.0,
) -> Figure:
    """One row per checkpoint, one column per data set; points coloured by true class, templates as stars.

    Axes within a row share their limits (square, equal aspect), so cluster sizes compare across data sets;
    rows are scaled separately (models' feature scales differ; compare them by the relative spread shown in
    each panel). ``fig.axes`` are in row-major order.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    n_rows = len(results)
    n_cols = max(len(r.splits) for r in results)
    fig = Figure(figsize=(panel_size * n_cols + 0.2, panel_size * n_rows + 0.45), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for row, r in enumerate(results):
        xlim, ylim = _row_limits([s.projection for s in r.splits])
        for col in range(n_cols):
            ax = axes[row][col]
            if col >= len(r.splits):
                ax.set_axis_off()
                continue
            if col > 0:
                ax.sharex(axes[row][0])
                ax.sharey(axes[row][0])
            s = r.splits[col]
            p = s.projection
            coords = p.coordinates.cpu()
            labels = p.labels.cpu()
            for i, k in enumerate(choice.indices):
                mask = labels == k
                ax.scatter(coords[mask, 0], coords[mask, 1], s=point_size, color=CLASS_COLORS[i], alpha=0.75,
                           linewidths=0, zorder=2)
            t = p.templates.cpu()
            ax.plot([*t[:, 0], t[0, 0]], [*t[:, 1], t[0, 1]], color="0.55", linewidth=0.7, linestyle=":",
                    zorder=1)
            for i in range(3):
                ax.scatter([t[i, 0]], [t[i, 1]], s=110, marker="*", color=CLASS_COLORS[i], edgecolors="black",
                           linewidths=0.8, zorder=3)
            st = p.statistics
            ax.set_xlabel(f"relative spread {st.relative_spread_plane:.3f} (plane), "
                          f"{st.relative_spread_full:.3f} (full)", fontsize="x-small")
            ax.set_xlim(*xlim)
            ax.set_ylim(*ylim)
            ax.set_aspect("equal", adjustable="box")
            ax.tick_params(labelsize="x-small")
            ax.set_title(f"{r.name} · {s.split} ({s.data.name})", fontsize="small")
            ax.grid(True, linewidth=0.4, alpha=0.3)
            ax.set_axisbelow(True)
    handles = [Line2D([], [], linestyle="none", marker="o", markersize=5, markeredgewidth=0, color=color,
                      label=f"class {class_label(k, name)}")
               for color, k, name in zip(CLASS_COLORS, choice.indices, choice.names, strict=True)]
    handles.append(Line2D([], [], linestyle="none", marker="*", markersize=10, markerfacecolor="white",
                          markeredgecolor="black", label=f"{TEMPLATE_LABEL}s (final-layer weights + bias)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize="small", frameon=False,
               handletextpad=0.2, columnspacing=1.2)
    return fig


def write_outputs(out: Path, results: Sequence[ProjectionResult], choice: ClassChoice,
                  doc: dict[str, Any]) -> list[Path]:
    """``out/projection.png|svg`` (all checkpoints in one figure) and ``out/projection.json`` (atomic writes)."""
    from calibscope.errors import InputError
    from calibscope.render.atomic import atomic_write_text
    from calibscope.render.figures import save_figure
    from calibscope.render.json_doc import dumps

    try:
        from calibscope.render.atomic import make_folder

        make_folder(out)
    except OSError as exc:
        raise InputError(f"cannot create the output directory '{out}': {exc.strerror or exc}") from None
    written = save_figure(projection_figure(results, choice), out / "projection")
    written.append(atomic_write_text(out / "projection.json", dumps(doc) + "\n"))
    return written


# --------------------------------------------------------------------------------------------------------
# terminal
# --------------------------------------------------------------------------------------------------------


def print_tables(results: Sequence[ProjectionResult], choice: ClassChoice, *,
                 written: list[Path] | None = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    labels = ", ".join(class_label(i, n) for i, n in zip(choice.indices, choice.names, strict=True))
    how = "chosen with --classes" if choice.picked_on is None else \
        f"picked: most mutual confusion on {choice.picked_on}; choose others with --classes"
    console.print(f"Classes {escape(labels)}  [dim]({escape(how)})[/dim]")
    table = Table(title="Relative spread of the clusters (smaller = tighter)", title_justify="left",
                  header_style="bold")
    table.add_column("Model")
    table.add_column("Data")
    table.add_column("n (a/b/c)", justify="right")
    table.add_column("Plane", justify="right")
    table.add_column("Full", justify="right")
    table.add_column("Equidist.", justify="right")
    for r in results:
        for s in r.splits:
            st = s.projection.statistics
            table.add_row(escape(r.name), s.split, "/".join(map(str, s.projection.counts)),
                          f"{st.relative_spread_plane:.4f}", f"{st.relative_spread_full:.4f}",
                          f"{st.equidistance_plane:.3f}")
    console.print(table)
    console.print("[dim]Penultimate-layer plane projection (Müller et al. 2019 §2). Relative spread = mean "
                  "distance to the class centre / mean distance between the centres, in the plane and in the "
                  "full feature space; equidist. = min/max centre distance in the plane (1 = equilateral).[/dim]")
    if written:
        console.print(f"[dim]wrote {len(written)} files to {escape(str(written[0].parent))}/[/dim]")
