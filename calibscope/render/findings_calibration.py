"""Sentences derived from measured numbers for the CORP, calibrate and distill sections of the report (the
pattern of :mod:`calibscope.render.findings`): each names who is lowest and highest and by how much, and says
only what the values support. Nothing here computes a metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["calibrate_findings", "corp_findings", "distill_findings"]


def corp_findings(results: Sequence[Any]) -> list[str]:
    """From results carrying ``.name`` and ``.corp``: per model whether the CORP curve leaves its band; with
    several, the least/most miscalibrated (Brier MCB) and the best/worst discriminating (Brier DSC)."""
    from calibscope.render.corp_view import findings

    return findings([(r.name, r.corp) for r in results if getattr(r, "corp", None) is not None])


def _criterion_label(criterion: str) -> str:
    return "classwise ECE" if criterion == "sce" else criterion.upper()


def calibrate_findings(results: Sequence[Any]) -> list[str]:
    """From :class:`~calibscope.workflows.calibrate.CalibrateResult` objects: per model the verdict of
    ``calibscope calibrate`` (best method, its lead and whether the paired bootstrap separates it from the
    runner-up) and how much the best changes the criterion against the uncalibrated model; with several, whose
    criterion the best calibrator lowers most."""
    from calibscope.render.calibrate_view import verdict

    lines, gains = [], []
    for r in results:
        c = r.comparison
        label = _criterion_label(c.criterion)
        before = c.score("uncalibrated").metrics.value(c.criterion)
        after = c.score(c.best).metrics.value(c.criterion)
        lines.append(f"{r.name}: {verdict(r)}; {label} {before:.4f} uncalibrated → {after:.4f}.")
        gains.append((r.name, before - after, label))
    if len(gains) >= 2 and len({g[2] for g in gains}) == 1:
        ordered = sorted(gains, key=lambda g: g[1])
        (least, a, label), (most, b, _) = ordered[0], ordered[-1]
        lines.append(f"Calibration lowers the {label} most for {most} (by {b:.4f}) and least for {least} "
                     f"(by {a:.4f}).")
    return lines


def distill_findings(result: Any) -> list[str]:
    """From a :class:`~calibscope.workflows.distill.DistillResult`: which model's soft targets carry the most and
    the least non-target information (Müller et al. 2019 §4), at every T or only at some; how closely each
    other model follows the first."""
    names = list(result.teachers)
    lines = []
    if len(names) >= 2:
        temperatures = [p.temperature for p in result.teachers[names[0]].profiles]
        tops, bottoms = [], []
        for i in range(len(temperatures)):
            ordered = sorted(names, key=lambda n: result.teachers[n].profiles[i].non_target_information)
            bottoms.append(ordered[0])
            tops.append(ordered[-1])
        i0 = 0
        top, bottom = result.teachers[tops[i0]].profiles[i0], result.teachers[bottoms[i0]].profiles[i0]
        at = f"T = {temperatures[i0]:g}"
        if len(set(tops)) == 1 and len(set(bottoms)) == 1:
            lines.append(f"{tops[0]}'s soft targets carry the most non-target information at every T "
                         f"({', '.join(f'{t:g}' for t in temperatures)}) and {bottoms[0]}'s the least — at {at}: "
                         f"{top.non_target_information:.3f} vs {bottom.non_target_information:.3f} nats "
                         f"(normalised non-target entropy {top.non_target_entropy_normalised:.3f} vs "
                         f"{bottom.non_target_entropy_normalised:.3f}; 1 = the wrong classes look alike).")
        else:
            parts = [f"T = {t:g}: {hi} most, {lo} least" for t, hi, lo in zip(temperatures, tops, bottoms,
                                                                                strict=True)]
            lines.append("Which model's soft targets carry the most non-target information changes with T ("
                         + "; ".join(parts) + ").")
    for teacher, student, a in result.students:
        lines.append(f"{student} agrees with {teacher} on {100 * a.agreement:.2f} % of the top-1 predictions "
                     f"(KL at T = 1: {a.kl_at_1:.4f} nats; T²·KL at T = {a.temperature:g}: "
                     f"{a.distillation_loss:.4f}).")
    return lines
