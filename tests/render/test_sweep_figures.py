"""Temperature-sweep figures (Müller et al. 2019, Fig. 5): the curves are the sweep's numbers, the log NLL axis
has readable labels (not only 1, 2, 5) and no legend sits over the curves."""

from __future__ import annotations

import pytest

from calibscope.render.figures import log_axis_ticks
from calibscope.render.report_sections import temperature_comparison_figure
from calibscope.render.temperature_view import sweep_figure
from calibscope.workflows.session import Session
from calibscope.workflows.temperature import run_temperature


@pytest.mark.parametrize(("lo", "hi", "expected"), [
    (0.19, 6.0, [0.2, 0.5, 1.0, 2.0, 5.0]),  # 1-2-5 gives four labels
    (0.28, 3.1, [0.3, 0.5, 1.0, 2.0, 3.0]),  # 1-2-5 gives three (0.5, 1, 2): 1-2-3-5
    (0.009, 120.0, [0.01, 0.1, 1.0, 10.0, 100.0]),  # decades suffice
    (0.16, 0.45, [0.2, 0.3, 0.4]),  # less than a decade: the finest set, all it has
])
def test_log_axis_ticks(lo, hi, expected):
    assert log_axis_ticks(lo, hi) == pytest.approx(expected, rel=1e-12)


def test_log_axis_ticks_rejects_non_positive():
    with pytest.raises(ValueError, match="0 < lo"):
        log_axis_ticks(0.0, 1.0)


@pytest.fixture(scope="module")
def results(samples):
    session = Session(samples / "digits_val.npz")
    return [run_temperature(session, samples / f"digits_{m}.pt2", apply=samples / "digits_test.npz", name=m)
            for m in ("hard", "ls")]


def _drawn(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # layout done: legends and axes at their final places
    return canvas.get_renderer()


def _legend_outside_every_axes(fig) -> None:
    renderer = _drawn(fig)
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends, "the figure has a legend"
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), "a legend covers an axes"


def _nll_labels(ax) -> list[str]:
    return [t.get_text() for t in ax.yaxis.get_ticklabels() if t.get_text()
            and ax.get_ylim()[0] <= t.get_position()[1] <= ax.get_ylim()[1]]


def test_single_sweep_figure_curves_labels_and_legend(results):
    r = results[0]
    fig = sweep_figure(r)
    ax_ece, ax_nll = fig.axes
    assert ax_nll.get_yscale() == "log"
    curves = [line for line in ax_nll.get_lines() if len(line.get_xdata()) > 2]
    assert [list(c.get_ydata()) for c in curves] == [list(r.fit.sweep.nll), list(r.apply.sweep.nll)]
    assert list(curves[0].get_xdata()) == list(r.fit.sweep.temperatures)
    labels = _nll_labels(ax_nll)
    lo, hi = ax_nll.get_ylim()
    assert labels == [f"{t:g}" for t in log_axis_ticks(lo, hi)]
    assert len(labels) >= 4 and not set(labels) <= {"1", "2", "5", "10"}
    _legend_outside_every_axes(fig)


def test_comparison_sweep_figure_curves_labels_and_legend(results):
    fig = temperature_comparison_figure(results)
    ax_ece, ax_nll = fig.axes
    curves = [line for line in ax_nll.get_lines() if len(line.get_xdata()) > 2]
    assert [list(c.get_ydata()) for c in curves] == [list(r.apply.sweep.nll) for r in results]
    assert len(_nll_labels(ax_nll)) >= 4
    names = [t.get_text() for t in fig.legends[0].get_texts()]
    assert names[:2] == [f"{r.name} (T* {r.temperature:.3g})" for r in results]
    _legend_outside_every_axes(fig)
