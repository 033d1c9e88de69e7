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

__all__ = ["ClassChoice", "ProjectedSplit", "ProjectionResult", "document", "paper_layout_figure", "print_json",
           "print_tables", "projection_figure", "template_scale", "write_outputs"]

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


def _results_payload(results: Sequence[ProjectionResult]) -> list[dict[str, Any]]:
    return [
        {
            "name": r.name,
            "checkpoint": str(r.path),
            "format": r.format,
            "feature_layer": r.feature_layer,
            "splits": [
                {"split": s.split, "data": str(s.data), "inference": s.inference, **_projection_dict(s.projection)}
                for s in r.splits
            ],
        }
        for r in results
    ]


def _classes_payload(choice: ClassChoice) -> list[dict[str, Any]]:
    return [{"index": i, "name": n} for i, n in zip(choice.indices, choice.names, strict=True)]


def document(results: Sequence[ProjectionResult], choice: ClassChoice, *, per_class: int | None,
             rows: Sequence[Any] | None = None) -> dict[str, Any]:
    """The ``calibscope/projection`` v1 document (``docs/projection.md``); with ``rows`` (``--paper-layout``)
    also ``layout: "paper"`` and ``rows`` (role, classes, results each; the top-level ones are row 1's)."""
    from calibscope.render.json_doc import json_document

    payload: dict[str, Any] = {
        "classes": _classes_payload(choice),
        "classes_picked_on": choice.picked_on,
        "per_class": per_class,
        "layout": "paper" if rows else "rows-per-model",
        "results": _results_payload(results),
        "definition": {
            "templates": "w~_k = [w_k; b_k] (final-layer weight row and bias); x~ = [x; 1]",
            "basis": "orthonormal E of span(w~_b - w~_a, w~_c - w~_a) by QR in float64; first axis u1 from a to b, "
                     "second u2 orthogonal to it in the plane, towards c",
            "origin": "p0 = mean of the three templates",
            "coordinates": "u = E^T (x~ - p0)",
            "relative_spread": "mean over the 3 classes of the mean distance to the class centre, divided by "
                               "the mean distance between the 3 centres (plane: u; full: x)",
            "equidistance": "min / max distance between the class centres",
            "paper_layout": "row 1: the triple with the least mutual confusion M_ab + M_ac + M_bc (M = C + C^T of "
                            "the confusion matrix); row 2: the most confused pair (a, b) and the class c with the "
                            "least M_ac + M_bc",
            "reference": "Müller, Kornblith & Hinton 2019, When Does Label Smoothing Help?, Section 2 and Fig. 1",
        },
    }
    if rows:
        payload["rows"] = [{"role": row.role, "classes": _classes_payload(row.choice),
                            "results": _results_payload(row.results)} for row in rows]
    return json_document("projection", payload, meta={"command": "project", "n_checkpoints": len(results)})


def print_json(doc: dict[str, Any]) -> None:
    from calibscope.render.json_doc import dumps

    print(dumps(doc))


# --------------------------------------------------------------------------------------------------------
# figure
# --------------------------------------------------------------------------------------------------------


# templates nearer to p0 than this fraction of a panel's half-width are drawn scaled up (arrows from p0)
_TEMPLATE_VISIBLE = 0.15
_TEMPLATE_TARGET = 0.4  # the longest scaled arrow reaches this fraction of the half-width
_NICE = (1.0, 2.0, 5.0)


def _limits(projections: Sequence[PlaneProjection], scale: float = 1.0
            ) -> tuple[tuple[float, float], tuple[float, float]]:
    """Square limits (equal spans) holding every point, p0 and every template drawn ×``scale``, with a margin."""
    import torch

    points = torch.cat([torch.cat([p.coordinates, scale * p.templates, p.templates.new_zeros(1, 2)])
                        for p in projections]).cpu()
    lo, hi = points.min(dim=0).values, points.max(dim=0).values
    centre = (lo + hi) / 2
    half = float((hi - lo).max()) / 2 * 1.1 or 1.0
    return ((float(centre[0]) - half, float(centre[0]) + half), (float(centre[1]) - half, float(centre[1]) + half))


def template_scale(projections: Sequence[PlaneProjection], half_width: float) -> float:
    """1 when the templates stand out from p0 (the longest reaches ≥ 15 % of the panel's half-width), else
    the largest 1-2-5 factor that brings the longest to at most 40 % of it (a label says so in the panel)."""
    import math

    radius = max(float(p.templates.norm(dim=1).max()) for p in projections)
    if radius <= 0 or radius >= _TEMPLATE_VISIBLE * half_width:
        return 1.0
    want = _TEMPLATE_TARGET * half_width / radius
    exponent = math.floor(math.log10(want))
    return max(m * 10.0 ** exponent for m in _NICE if m * 10.0 ** exponent <= want)


def _scaled_limits(projections: Sequence[PlaneProjection]):
    """(xlim, ylim, template scale) for panels that share limits."""
    xlim, _ = _limits(projections)
    scale = template_scale(projections, (xlim[1] - xlim[0]) / 2)
    xlim, ylim = _limits(projections, scale)
    return xlim, ylim, scale


def _axis_labels(ax, choice: ClassChoice) -> None:
    a, b, c = choice.indices
    ax.set_xlabel(f"$u_1$: along $\\tilde w_{{{b}}} - \\tilde w_{{{a}}}$", fontsize="x-small", labelpad=1)
    ax.set_ylabel(f"$u_2$: $\\perp u_1$, towards $\\tilde w_{{{c}}}$", fontsize="x-small", labelpad=1)


def _draw_panel(ax, p: PlaneProjection, choice: ClassChoice, title: str, scale: float, point_size: float) -> None:
    coords = p.coordinates.cpu()
    labels = p.labels.cpu()
    for i, k in enumerate(choice.indices):
        mask = labels == k
        ax.scatter(coords[mask, 0], coords[mask, 1], s=point_size, color=CLASS_COLORS[i], alpha=0.75,
                   linewidths=0, zorder=2)
    t = (scale * p.templates).cpu()
    ax.plot([0.0], [0.0], marker="+", color="black", markersize=6, linestyle="none", zorder=1.6)
    for i, k in enumerate(choice.indices):
        x, y = float(t[i, 0]), float(t[i, 1])
        ax.annotate("", xy=(x, y), xytext=(0.0, 0.0), zorder=1,
                    arrowprops={"arrowstyle": "-", "color": CLASS_COLORS[i], "linewidth": 1.3,
                                "shrinkA": 0, "shrinkB": 0})
        star = ax.scatter([x], [y], s=90, marker="*", color=CLASS_COLORS[i], edgecolors="black",
                          linewidths=0.7, zorder=1.5)  # under the points: never hides an example
        star.set_gid(f"template-scale={scale:g}")
        ax.annotate(f"$\\tilde w_{{{k}}}$", xy=(x, y), xytext=(5 if x >= 0 else -5, 5 if y >= 0 else -5),
                    textcoords="offset points",
                    fontsize="x-small", color="black", ha="left" if x >= 0 else "right",
                    va="bottom" if y >= 0 else "top", zorder=6)
    if scale != 1.0:
        ax.text(0.02, 0.02, f"templates ×{scale:g} (arrows from $p_0$, +)", transform=ax.transAxes,
                fontsize="xx-small", color="0.25", ha="left", va="bottom")
    st = p.statistics
    ax.set_title(f"{title}\nrel. spread {st.relative_spread_plane:.3f} (plane), {st.relative_spread_full:.3f} "
                 "(full)", fontsize="x-small")
    _axis_labels(ax, choice)
    ax.set_aspect("equal", adjustable="box")
    ax.tick_params(labelsize="x-small")
    ax.grid(True, linewidth=0.4, alpha=0.3)
    ax.set_axisbelow(True)


def _class_handles(choice: ClassChoice, *, templates: bool = True):
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], linestyle="none", marker="o", markersize=5, markeredgewidth=0, color=color,
                      label=f"class {class_label(k, name)}")
               for color, k, name in zip(CLASS_COLORS, choice.indices, choice.names, strict=True)]
    if templates:
        handles.append(Line2D([], [], linestyle="none", marker="*", markersize=10, markerfacecolor="white",
                              markeredgecolor="black", label=f"{TEMPLATE_LABEL}s w̃ (final-layer weights + bias)"))
    return handles


def _grid_figure(grid: Sequence[Sequence[tuple[str, PlaneProjection, Any] | None]], choices: Sequence[ClassChoice],
                 *, shared_scale: bool, panel_size: float, point_size: float, extra_height: float = 0.55) -> Figure:
    """Panels ``grid[row][col] = (title, projection, group)`` (None: empty), each row on ``choices[row]``;
    panels of one group share their limits (and template scale), or all panels with ``shared_scale``."""
    from matplotlib.figure import Figure

    n_rows, n_cols = len(grid), max(len(row) for row in grid)
    fig = Figure(figsize=(panel_size * n_cols + 0.3, panel_size * n_rows + extra_height), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    cells = [cell for row in grid for cell in row if cell is not None]
    groups: dict[Any, list[PlaneProjection]] = {}
    for cell in cells:
        groups.setdefault("all" if shared_scale else cell[2], []).append(cell[1])
    limits = {key: _scaled_limits(projections) for key, projections in groups.items()}
    for r, row in enumerate(grid):
        for col in range(n_cols):
            ax = axes[r][col]
            cell = row[col] if col < len(row) else None
            if cell is None:
                ax.set_axis_off()
                continue
            xlim, ylim, scale = limits["all" if shared_scale else cell[2]]
            _draw_panel(ax, cell[1], choices[r], cell[0], scale, point_size)
            ax.set_xlim(*xlim)
            ax.set_ylim(*ylim)
    return fig


def projection_figure(
    results: Sequence[ProjectionResult],
    choice: ClassChoice,
    *,
    shared_scale: bool = False,
    panel_size: float = 3.0,
    point_size: float = 9.0,
) -> Figure:
    """One row per checkpoint, one column per data set; points coloured by true class, templates as stars at
    the end of arrows from the origin p0 (+). Axes are named: u₁ runs along w̃_b − w̃_a, u₂ is orthogonal to
    it in the plane, towards w̃_c (Gram–Schmidt of the QR).

    Templates are drawn where they are unless they would sit within 15 % of the half-width from p0 (the feature
    scale is usually far larger than the weights'), where they all collapse onto one spot: then they are
    drawn ×k (k from 1-2-5, said in the panel) so their directions show. Axes within a row share their limits
    (square, equal aspect); rows are scaled separately unless ``shared_scale``. ``fig.axes`` are in row-major
    order; each template star's gid is ``template-scale=k``.
    """
    grid = [[(f"{r.name} · {s.split} ({s.data.name})", s.projection, i) for s in r.splits]
            for i, r in enumerate(results)]
    fig = _grid_figure(grid, [choice] * len(results), shared_scale=shared_scale, panel_size=panel_size,
                       point_size=point_size)
    handles = _class_handles(choice)
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize="small", frameon=False,
               handletextpad=0.2, columnspacing=1.2)
    return fig


ROLE_TITLES = {"dissimilar": "three dissimilar classes (least mutual confusion)",
               "similar": "a similar pair (most confused) + a third class"}


def paper_layout_figure(rows: Sequence[Any], *, shared_scale: bool = False, panel_size: float = 2.6,
                        point_size: float = 7.0) -> Figure:
    """Müller et al. (2019) Fig. 1's layout: one row per class triple (``rows``: the ``ProjectionRow`` s of a
    ``--paper-layout`` run — three dissimilar classes, then a similar pair with a third), one column per
    model × data set (e.g. hard train, hard val, LS train, LS val); each row's legend at its right. The panels
    of one model in one row share their limits (feature scales differ between models), all panels with
    ``shared_scale``."""
    grid = [[(f"{r.name} · {s.split}", s.projection, (i, j)) for j, r in enumerate(row.results) for s in r.splits]
            for i, row in enumerate(rows)]
    fig = _grid_figure(grid, [row.choice for row in rows], shared_scale=shared_scale, panel_size=panel_size,
                       point_size=point_size, extra_height=0.2)
    n_cols = max(len(g) for g in grid)
    for i, row in enumerate(rows):
        ax = fig.axes[i * n_cols + len(grid[i]) - 1]
        ax.legend(handles=_class_handles(row.choice, templates=False), loc="center left", bbox_to_anchor=(1.02, 0.5),
                  fontsize="x-small", frameon=False, title=ROLE_TITLES.get(row.role, row.role).replace(" (", "\n("),
                  title_fontsize="x-small", handletextpad=0.2)
    return fig


def write_outputs(out: Path, results: Sequence[ProjectionResult], choice: ClassChoice,
                  doc: dict[str, Any], *, shared_scale: bool = False, rows: Sequence[Any] | None = None) -> list[Path]:
    """``out/projection.png|svg`` (all checkpoints in one figure; the paper layout with ``rows``) and
    ``out/projection.json`` (atomic writes)."""
    from calibscope.render.atomic import atomic_write_text, output_folder
    from calibscope.render.figures import save_figure
    from calibscope.render.json_doc import dumps

    output_folder(out)
    fig = paper_layout_figure(rows, shared_scale=shared_scale) if rows else \
        projection_figure(results, choice, shared_scale=shared_scale)
    written = save_figure(fig, out / "projection")
    written.append(atomic_write_text(out / "projection.json", dumps(doc) + "\n"))
    return written


# --------------------------------------------------------------------------------------------------------
# terminal
# --------------------------------------------------------------------------------------------------------


def print_tables(results: Sequence[ProjectionResult], choice: ClassChoice, *,
                 written: list[Path] | None = None, rows: Sequence[Any] | None = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    groups = [(row.role, row.choice, row.results) for row in rows] if rows else [(None, choice, results)]
    for role, ch, rs in groups:
        labels = ", ".join(class_label(i, n) for i, n in zip(ch.indices, ch.names, strict=True))
        if role is not None:
            how = f"paper layout: {ROLE_TITLES.get(role, role)}, on {ch.picked_on}"
        elif ch.picked_on is None:
            how = "chosen with --classes"
        else:
            how = f"picked: most mutual confusion on {ch.picked_on}; choose others with --classes"
        console.print(f"Classes {escape(labels)}  [dim]({escape(how)})[/dim]")
        table = Table(title="Relative spread of the clusters (smaller = tighter)", title_justify="left",
                      header_style="bold")
        for column, justify in (("Model", "left"), ("Data", "left"), ("n (a/b/c)", "right"), ("Plane", "right"),
                                ("Full", "right"), ("Equidist.", "right")):
            table.add_column(column, justify=justify)
        for r in rs:
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
