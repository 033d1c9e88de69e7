"""The report's CORP, calibrate and distill sections (HTML bodies), drawn from the results their commands print
(``calibscope ece --corp``, ``calibscope calibrate --methods all``, ``calibscope distill``); every number
carries its exact value (:class:`~calibscope.render.html.Cell`) and every sentence comes from
:mod:`calibscope.render.findings_calibration`. Nothing here computes a metric.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from calibscope.render.html import Cell, FigureEmbedder, Row, esc, note_html, table_html
from calibscope.render.report_model import Report, Section
from calibscope.render.report_sections import _by_model, _duo, _figures, _model_rows, _names, _num, pct, rate

__all__ = ["BODIES"]


# ---- CORP ----------------------------------------------------------------------------------------------


def _corp(section: Section, report: Report, embed: FigureEmbedder) -> str:
    from calibscope.render.corp_view import corp_figure
    from calibscope.render.findings_calibration import corp_findings

    results = section.results
    names = _names(results, report)
    by = _by_model(results)
    c0 = results[0].corp
    band = (f"{100 * c0.band_level:g} % consistency band from {c0.band_resamples} resamples y* ~ Bernoulli(conf) "
            f"(numpy default_rng({c0.seed}))" if c0.band_resamples else "no consistency band")
    out = ['<p class="lead">' + esc(
        "CORP reliability (Dimitriadis, Gneiting & Jordan, PNAS 2021): the isotonic (PAV) regression ĉ of "
        "correctness on the top-label confidence, with no bins to choose, and the " + band + ": where ĉ leaves "
        "it, the miscalibration is more than chance. For the Brier and the log score of the top-label event, "
        "S = MCB − DSC + UNC with MCB = S(conf) − S(ĉ) (miscalibration), DSC = S(accuracy) − S(ĉ) "
        "(discrimination) and UNC = S(accuracy) (uncertainty); lower MCB and higher DSC are better.") + "</p>"]
    for line in corp_findings(results):
        out.append("<p>" + esc(line) + "</p>")
    spec: list[tuple[str, str, Callable[[Any], Cell | None]]] = []
    for score, title in (("brier", "Brier"), ("log", "Log")):
        for field, label in (("score", "score S"), ("miscalibration", "MCB (miscalibration)"),
                             ("discrimination", "DSC (discrimination)"), ("uncertainty", "UNC (uncertainty)")):
            def fn(r: Any, score: str = score, field: str = field) -> Cell:
                value = getattr(getattr(r.corp, score), field)
                return _num(rate(value), value, f"corp.{score}.{field}", r.name)
            spec.append((f"corp.{score}.{field}", f"{title} {label}", fn))
    if c0.band_resamples:
        spec.append(("corp.outside_band", f"Examples outside the {100 * c0.band_level:g} % band",
                     lambda r: _num(f"{r.corp.outside_band:,} ({pct(r.corp.outside_band / r.corp.n)})",
                                    r.corp.outside_band, "corp.outside_band", r.name)))
    spec.append(("corp.distinct", "Distinct confidences",
                 lambda r: _num(f"{len(r.corp.x):,}", len(r.corp.x), "corp.distinct", r.name)))
    table = table_html(["", *names], _model_rows(names, spec, by))
    figs = [embed.html(corp_figure(by[n].corp, title=f"{n}: CORP"), alt=f"CORP reliability diagram of {n}",
                       caption=f"{n}: PAV recalibration (red) against the confidence, consistency band (blue), "
                               "examples per confidence below.") for n in names]
    out.append(_duo(table, *figs))
    return "\n".join(out)


# ---- calibrate -----------------------------------------------------------------------------------------

_CALIBRATE_COLUMNS = (("ece", "ECE"), ("sce", "Classwise ECE"), ("nll", "NLL"), ("brier", "Brier"),
                      ("accuracy_change", "Δ accuracy"))


def _method_cell(score: Any, key: str, model: str) -> Cell:
    if score.metrics is None:
        return Cell("not fitted", None, f"calibrate.{score.method}.{key}", model, "na")
    value = score.accuracy_change if key == "accuracy_change" else score.metrics.value(key)
    text = f"{100 * value:+.2f} pp" if key == "accuracy_change" else rate(value)
    if score.intervals and key in score.intervals:
        lo, hi = score.intervals[key]
        text += (f" [{100 * lo:+.2f}, {100 * hi:+.2f}]" if key == "accuracy_change" else f" [{rate(lo)}, {rate(hi)}]")
    return _num(text, value, f"calibrate.{score.method}.{key}", model)


def _calibrate(section: Section, report: Report, embed: FigureEmbedder) -> str:
    from calibscope.render.calibrate_view import comparison_figure
    from calibscope.render.findings_calibration import calibrate_findings

    results = section.results
    names = _names(results, report)
    by = _by_model(results)
    c = results[0].comparison
    fit_on = Path(str(results[0].fit_data.get("data"))).name
    evaluated = results[0].evaluation
    out = ['<p class="lead">' + esc(
        f"Every calibrator of calibscope calibrate --methods all (docs/calibrate.md), fitted on {fit_on} "
        f"({c.n_fit:,} examples) and scored on {Path(str(evaluated.get('data'))).name} ({c.n_eval:,}): "
        f"ECE ({c.n_bins} bins), classwise ECE, NLL, Brier and the accuracy change, with 95 % percentile "
        f"bootstrap intervals ({c.bootstrap} resamples of the test examples, seed {c.seed}, the same resamples "
        f"for every method). Best = lowest {c.criterion.upper() if c.criterion != 'sce' else 'classwise ECE'}; "
        "the uncalibrated model competes too; whether the best beats the runner-up is a paired bootstrap of the "
        "difference.") + "</p>"]
    for line in calibrate_findings(results):
        out.append("<p>" + esc(line) + "</p>")
    for n in names:
        r = by[n]
        rows = [Row(f"calibrate.{s.method}", s.method + (" ★" if s.method == r.comparison.best else ""),
                    tuple(_method_cell(s, key, n) for key, _ in _CALIBRATE_COLUMNS))
                for s in r.comparison.scores]
        table = table_html(["Method", *(label for _, label in _CALIBRATE_COLUMNS)], rows,
                           caption=f"{n} (★ best by {r.comparison.criterion})")
        fig = embed.html(comparison_figure(r), alt=f"Calibrators compared for {n}",
                         caption=f"{n}: the criterion and ECE of each method with 95 % intervals (red: best).")
        out.append(_duo(table, fig))
        for note in r.notes:
            out.append(note_html(f"{n}: {note}"))
    return "\n".join(out)


# ---- distill -------------------------------------------------------------------------------------------


def _distill(section: Section, report: Report, embed: FigureEmbedder) -> str:
    from calibscope.render.distill_view import _label, entropy_figure, soft_target_figure
    from calibscope.render.findings_calibration import distill_findings

    result = section.results
    names = [m.name for m in report.models if m.name in result.teachers]
    first = names[0]
    t = result.settings.temperature
    out = ['<p class="lead">' + esc(
        "Each model's soft targets softmax(z / T) (Hinton et al. 2015) on the test data, as calibscope distill "
        "computes them: the entropy of the renormalised wrong-class distribution ÷ log(K−1) (1 = the wrong "
        "classes look alike to the model; Müller et al. 2019 §4: label smoothing pushes it towards 1), its information "
        "log(K−1) − H in nats, and the mean mass off the true class, at T = "
        + ", ".join(f"{x:g}" for x in result.settings.temperatures) + f"; the most similar class pair at T = {t:g}."
        + (f" Every other model is compared with {first} as if {first} were its teacher (Stanton et al. 2021): "
           f"T²·KL(first_T ‖ other_T) at T = {t:g}, KL at T = 1 and top-1 agreement — the models need not have "
           "been distilled from one another; then these say how alike their predictions are."
           if result.students else "")) + "</p>"]
    for line in distill_findings(result):
        out.append("<p>" + esc(line) + "</p>")
    by = dict(result.teachers)
    spec: list[tuple[str, str, Callable[[Any], Cell | None]]] = []
    temperatures = [p.temperature for p in result.teachers[first].profiles]
    for i, temp in enumerate(temperatures):
        for field, label, fmt in (("non_target_entropy_normalised", "non-target entropy ÷ log(K−1)", "{:.3f}"),
                                  ("non_target_information", "non-target information (nats)", "{:.3f}"),
                                  ("off_true_mass", "mass off the true class", "{:.3f}")):
            key = f"distill.T{temp:g}.{field}"

            def fn(st: Any, i: int = i, field: str = field, fmt: str = fmt, key: str = key) -> Cell:
                value = getattr(st.profiles[i], field)
                return Cell(fmt.format(value), value, key, None)
            spec.append((key, f"T = {temp:g}: {label}", fn))
    spec.append(("distill.accuracy", "Accuracy (T = 1)", lambda st: Cell(pct(st.accuracy), st.accuracy,
                                                                          "distill.accuracy", None)))
    spec.append(("distill.ece", "ECE (T = 1, 15 bins)", lambda st: Cell(rate(st.ece), st.ece, "distill.ece", None)))
    spec.append(("distill.pair", f"Most similar pair (T = {t:g})", lambda st: None if not st.similar_pairs else Cell(
        f"{_label(result, st.similar_pairs[0][0])}–{_label(result, st.similar_pairs[0][1])} "
        f"{st.similar_pairs[0][2]:.3f}", st.similar_pairs[0][2], "distill.pair", None)))
    rows = [Row(r.key, r.label, tuple(Cell(c.text, c.value, r.key, n, c.css) for c, n in zip(r.cells, names,
                                                                                        strict=True)), r.hint)
            for r in _model_rows(names, spec, by)]
    students = {s: a for _, s, a in result.students}
    for key, label, get, fmt in (
            ("distill.distillation_loss", f"T²·KL vs {first} (T = {t:g})", lambda a: a.distillation_loss, rate),
            ("distill.kl_at_1", f"KL vs {first} at T = 1 (nats)", lambda a: a.kl_at_1, rate),
            ("distill.agreement", f"top-1 agreement with {first}", lambda a: a.agreement, pct)):
        if students:
            rows.append(Row(key, label, tuple(
                _num(fmt(get(students[n])), get(students[n]), key, n) if n in students
                else Cell("teacher" if n == first else "—", None, key, n, "na") for n in names)))
    table = table_html(["", *names], rows)
    figs = [embed.html(entropy_figure(result), alt="Non-target entropy against T",
                       caption="Normalised non-target entropy of each model's soft targets against T.")]
    figs += [embed.html(soft_target_figure(result, n), alt=f"Average soft targets of {n}",
                        caption=f"{n}: mean softmax(z/{t:g}) by true class, classes in clustering order.")
             for n in names]
    out.append(_duo(table, figs[0]))
    out.append(_figures(*figs[1:]))
    return "\n".join(out)


BODIES: dict[str, Callable[[Section, Report, FigureEmbedder], str]] = {
    "corp": _corp,
    "calibrate": _calibrate,
    "distill": _distill,
}
