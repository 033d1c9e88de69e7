"""What ``calibscope hessian`` shows: a side-by-side table, the ``calibscope/hessian`` JSON document, figures.

``results`` is a list of :class:`HessianResult` (one per checkpoint); nothing here computes a number — the
eigenvalues, residuals, trace, density and repeat statistics all come from
:mod:`calibscope.diagnostics.hessian`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibscope.results import HessianResult  # noqa: F401 - re-exported (the result types)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from calibscope.diagnostics.hessian import HessianSpectrum

__all__ = ["HessianResult", "densities_figure", "document", "eigenvalue_figure", "print_json", "print_tables",
           "write_outputs"]

_MISSING = "—"


# --------------------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------------------


def _spectrum_dict(s: HessianSpectrum) -> dict[str, Any]:
    from calibscope.render.json_doc import report_to_dict

    d = report_to_dict(s)
    settings = d.pop("settings")
    return {"eigenvalues": d.pop("eigenvalues"), "ratio": s.ratio, **d, "settings": settings}


def document(results: list[HessianResult]) -> dict[str, Any]:
    """The ``calibscope/hessian`` v1 document (``docs/hessian.md``)."""
    from calibscope.render.json_doc import json_document

    entries = []
    for r in results:
        entry = {"name": r.name, "checkpoint": str(r.path), "format": r.format, **r.meta,
                 **_spectrum_dict(r.spectrum)}
        if r.repeats is not None:
            rep = r.repeats
            entry["repeats"] = {
                "count": len(rep.spectra), "eigenvalues_mean": rep.eigenvalues_mean,
                "eigenvalues_std": rep.eigenvalues_std, "ratio_mean": rep.ratio_mean, "ratio_std": rep.ratio_std,
                "trace_mean": rep.trace_mean, "trace_std": rep.trace_std,
                "trace_hutchpp_mean": rep.trace_hutchpp_mean, "trace_hutchpp_std": rep.trace_hutchpp_std,
                "subsets": [_spectrum_dict(s) for s in rep.spectra],
            }
        entries.append(entry)
    return json_document("hessian", {"results": entries}, meta={"command": "hessian", "n_checkpoints": len(results)})


def print_json(doc: dict[str, Any]) -> None:
    from calibscope.render.json_doc import dumps

    print(dumps(doc))


# --------------------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------------------


def _series(results: list[HessianResult]):
    from calibscope.render.figures import series_colors

    return zip(results, series_colors(len(results)), strict=True)


def _legend_label(r: HessianResult) -> str:
    s = r.spectrum
    return f"{r.name}: λ1/λ{len(s.eigenvalues)} = {s.ratio:.3g}, train loss {s.loss:.2g}"


def eigenvalue_figure(results: list[HessianResult], *, figsize: tuple[float, float] = (5.0, 3.6)) -> Figure:
    """λ1…λk against their index, one line with markers per checkpoint (error bars: std across subsets with
    ``--repeats``); the legend gives λ1/λk and the training loss each spectrum was measured at.

    Points, not bars: only the values mean something. Log y axis when every value is positive and they span
    more than a factor of 20 (SGD vs SAM), linear otherwise. The legend sits below the axes.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    k = max(len(r.spectrum.eigenvalues) for r in results)
    values_all = []
    for r, (color, marker) in _series(results):
        if r.repeats is not None:
            values, errors = list(r.repeats.eigenvalues_mean), list(r.repeats.eigenvalues_std)
        else:
            values, errors = list(r.spectrum.eigenvalues), None
        values_all += values
        ax.errorbar(range(1, len(values) + 1), values, yerr=errors, color=color, marker=marker, markersize=5,
                    linewidth=1.3, capsize=3 if errors else 0, label=_legend_label(r), zorder=3)
    positive = values_all and all(v > 0 for v in values_all)
    if positive and max(values_all) / min(values_all) > 20:
        ax.set_yscale("log")
    elif not positive:
        ax.axhline(0.0, color="0.3", linewidth=0.6)
    ax.set_xticks(range(1, k + 1), [f"$\\lambda_{{{i + 1}}}$" for i in range(k)])
    ax.set_xlim(0.6, k + 0.4)
    ax.set_ylabel("Hessian eigenvalue")
    ax.grid(True, linewidth=0.5, alpha=0.35)
    ax.set_axisbelow(True)
    fig.legend(loc="outside lower center", fontsize="x-small", frameon=False, ncols=1)
    first = results[0].spectrum.settings
    ax.set_title(f"Top Hessian eigenvalues ({first.examples:,} examples, BN {first.bn})", fontsize="medium")
    return fig


def densities_figure(results: list[HessianResult], *, figsize: tuple[float, float] | None = None) -> Figure:
    """Spectral densities (stochastic Lanczos quadrature) side by side on shared axes, log density as Ghorbani
    et al. 2019 and Foret et al. 2021 (Fig. 3) draw them; λ1 marked, λ1 and λ1/λk in each panel.

    Only checkpoints with a density are drawn; ``fig.axes[i]`` is the i-th of them.
    """
    from matplotlib.figure import Figure

    drawn = [(r, style) for r, style in _series(results) if r.spectrum.density is not None]
    if not drawn:
        raise ValueError("Expected at least one result with a spectral density (--density)")
    n = len(drawn)
    fig = Figure(figsize=figsize or (2.9 * n + 0.6, 3.0), layout="constrained")
    axes = fig.subplots(1, n, sharex=True, sharey=True, squeeze=False)[0]
    peak = max(max(r.spectrum.density.density) for r, _ in drawn)
    floor = max(peak * 1e-8, 1e-300)
    for ax, (r, (color, _)) in zip(axes, drawn, strict=True):
        d, s = r.spectrum.density, r.spectrum
        ax.semilogy(d.grid, [max(v, floor) for v in d.density], color=color, linewidth=1.2)
        ax.axvline(s.eigenvalues[0], color=color, linestyle="--", linewidth=1.0)
        ax.text(0.97, 0.96, f"$\\lambda_1$ = {s.eigenvalues[0]:.3g}\n$\\lambda_1/\\lambda_{{{len(s.eigenvalues)}}}$ = "
                f"{s.ratio:.3g}\ntrain loss {s.loss:.2g}", transform=ax.transAxes, ha="right", va="top",
                fontsize="x-small", bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": "0.7"})
        ax.set_title(r.name, fontsize="small")
        ax.set_xlabel("Eigenvalue")
        ax.grid(True, linewidth=0.5, alpha=0.35)
    axes[0].set_ylabel("Density")
    axes[0].set_ylim(floor, peak * 10)
    first = drawn[0][0].spectrum.density
    fig.suptitle(f"Hessian spectral density (SLQ, {first.runs}×{first.steps} steps)", fontsize="medium")
    return fig


def write_outputs(out: Path, results: list[HessianResult], doc: dict[str, Any]) -> list[Path]:
    """``out/hessian.json``, ``out/hessian_eigenvalues.png|svg`` and, with ``--density``,
    ``out/hessian_density.png|svg`` (every checkpoint's density side by side; atomic writes)."""
    from calibscope.render.atomic import atomic_write_text, output_folder
    from calibscope.render.figures import save_figure
    from calibscope.render.json_doc import dumps

    output_folder(out)
    written = save_figure(eigenvalue_figure(results), out / "hessian_eigenvalues")
    if any(r.spectrum.density is not None for r in results):
        written += save_figure(densities_figure(results), out / "hessian_density")
    written.append(atomic_write_text(out / "hessian.json", dumps(doc) + "\n"))
    return written


# --------------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------------


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _MISSING
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:.5g}"


def _rows(r: HessianResult, k: int) -> list[tuple[str, str]]:
    s, rep, st = r.spectrum, r.repeats, r.spectrum.settings
    rows = []
    for i in range(k):
        if i >= len(s.eigenvalues):
            rows.append((f"λ{i + 1}", _MISSING))
        elif rep is not None:
            rows.append((f"λ{i + 1}", f"{_num(rep.eigenvalues_mean[i])} ± {_num(rep.eigenvalues_std[i])}"))
        else:
            rows.append((f"λ{i + 1}", _num(s.eigenvalues[i])))
    ratio = f"{_num(rep.ratio_mean)} ± {_num(rep.ratio_std)}" if rep is not None else _num(s.ratio)
    rows.append((f"λ1/λ{len(s.eigenvalues)}", ratio))
    rel = [res / abs(ev) if ev else math.inf for res, ev in zip(s.residuals, s.eigenvalues, strict=True)]
    rows.append(("max residual / |λ|", f"{max(rel):.1e}" + ("" if s.converged else " (not converged)")))
    if rep is not None and rep.trace_mean is not None:
        rows.append(("trace (Hutchinson)", f"{_num(rep.trace_mean)} ± {_num(rep.trace_std)}"))
    elif s.trace is not None:
        rows.append(("trace (Hutchinson)", f"{_num(s.trace.trace)} ± {_num(s.trace.standard_error)} (s.e., "
                     f"{s.trace.n_hvp} HVPs)"))
    if rep is not None and rep.trace_hutchpp_mean is not None:
        rows.append(("trace (Hutch++)", f"{_num(rep.trace_hutchpp_mean)} ± {_num(rep.trace_hutchpp_std)}"))
    elif s.trace_hutchpp is not None:
        t = s.trace_hutchpp
        rows.append(("trace (Hutch++)", f"{_num(t.trace)} ± {_num(t.standard_error)} (s.e., {t.n_hvp} HVPs)"))
    rows += [
        ("loss (mean CE)", _num(s.loss)),
        ("HVPs (Lanczos)", str(s.n_hvp) if rep is None else " / ".join(str(x.n_hvp) for x in rep.spectra)),
        ("time", f"{s.seconds:.2f} s" if rep is None else f"{sum(x.seconds for x in rep.spectra):.2f} s"),
        ("examples", f"{st.examples:,}" + (f" × {len(rep.spectra)} subsets" if rep is not None else "")),
        ("parameters", f"{st.n_params:,} ({st.params})"),
        ("BatchNorm", st.bn if st.has_batchnorm else "none in model"),
        ("HVP method", st.hvp_method),
        ("device", f"{st.device} {st.dtype}, TF32 off"),
    ]
    return rows


def print_tables(results: list[HessianResult], *, written: list[Path] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    k = max(len(r.spectrum.eigenvalues) for r in results)
    first = results[0].spectrum.settings
    table = Table(title=f"Top Hessian eigenvalues (Lanczos, tol {first.tol:g}, seed {first.seed})",
                  title_justify="left", header_style="bold")
    table.add_column("")
    for r in results:
        table.add_column(r.name, justify="right")
    columns = [_rows(r, k) for r in results]
    for i, (label, _) in enumerate(columns[0]):
        table.add_row(label, *(rows[i][1] for rows in columns))
    console.print(table)

    if any(r.spectrum.per_layer for r in results):
        layers: list[str] = []
        for r in results:
            layers += [x.layer for x in r.spectrum.per_layer if x.layer not in layers]
        per = Table(title="Top eigenvalue of each layer's block H_ll", title_justify="left", header_style="bold")
        per.add_column("layer")
        for r in results:
            per.add_column(r.name, justify="right")
        for layer in layers:
            cells = []
            for r in results:
                hit = [x for x in r.spectrum.per_layer if x.layer == layer]
                cells.append(_MISSING if not hit else _num(hit[0].eigenvalue) + ("" if hit[0].converged else "*"))
            per.add_row(layer, *cells)
        console.print(per)
    for r in results:
        if not r.spectrum.converged:
            console.print(f"[yellow]{r.name}: not converged after {r.spectrum.n_hvp} HVPs; the residuals bound "
                          "the error — raise --max-hvp or loosen --tol[/yellow]")
    if written:
        console.print(f"[dim]wrote {len(written)} files to {written[0].parent}/[/dim]")
