"""The report's CORP, calibrate and distill sections: each calls the workflow of its own command
(``calibscope ece --corp``, ``calibscope calibrate --methods all``, ``calibscope distill``) with that command's
settings, on the report's data. All three are cheap: PAV refits on the distinct confidences, calibrators fitted
on validation logits (the models run once per data set; the session keeps their outputs), soft-target statistics
of logits already computed.

* ``corp``: as ``calibscope ece CKPT --data TEST --corp --seed S`` (band of 200 resamples).
* ``calibrate``: as ``calibscope calibrate CKPT --val VAL --test TEST --methods all --seed S`` (200 paired
  bootstrap resamples); needs ``--val``; a logits file is left out (its validation logits are not known); an
  ensemble / MC-dropout is calibrated as ``calibscope calibrate --ensemble`` does.
* ``distill``: every model's soft targets side by side, as ``calibscope distill A B ... --teachers N`` (the
  comparison of Müller et al. 2019 §4: a label-smoothed teacher's wrong classes look alike), and, with two or
  more models, every other model against the first as if the first were its teacher (T²·KL, KL at T = 1 and
  top-1 agreement, Stanton et al. 2021), as ``calibscope distill FIRST OTHER ...``. The models were not
  necessarily distilled from one another: the agreement then says how alike their predictions are.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.render.report_model import Section
    from calibscope.workflows.report import ReportContext


def corp_section(ctx: ReportContext) -> Section:
    from calibscope.render import ece_view
    from calibscope.workflows.calibration import CalibrationSettings, run_calibration
    from calibscope.workflows.report import _outcome, _per_model

    settings = CalibrationSettings(n_bins=ctx.settings.calibration.n_bins, corp=ctx.settings.corp)
    results, notes = _per_model(ctx.models, lambda m: run_calibration(ctx.test, m.path, settings, name=m.name))
    return _outcome("corp", results, notes, lambda rs: ece_view.document(rs, gate=None))


def calibrate_section(ctx: ReportContext) -> Section:
    from calibscope.render import calibrate_view
    from calibscope.workflows.calibrate import run_calibrate
    from calibscope.workflows.report import _outcome, _per_model, _skipped

    if ctx.val is None:
        return _skipped("calibrate", "no --val given (the calibrators are fitted on validation data and scored on "
                                     "the test data)")
    notes = [f"{m.name} is a logits file: calibrating it needs its logits on the validation data"
             for m in ctx.models if m.is_logits]
    models = [m for m in ctx.models if not m.is_logits]  # networks, ensembles and MC-dropout: they run on --val
    if not models:
        return _skipped("calibrate", "; ".join(notes))
    results, errors = _per_model(models, lambda m: run_calibrate(ctx.val, m.path, ctx.settings.calibrate,
                                                                 test=ctx.test, name=m.name))
    return _outcome("calibrate", results, notes + errors, lambda rs: [calibrate_view.document(r) for r in rs])


def distill_section(ctx: ReportContext) -> Section:
    from calibscope.render import distill_view
    from calibscope.render.report_model import Section
    from calibscope.workflows.distill import run_distill

    paths = [m.path for m in ctx.models]
    names = [m.name for m in ctx.models]
    s = ctx.settings.distill
    result = run_distill(ctx.test, paths, dataclasses.replace(s, teachers=len(paths)), names=names)
    if len(paths) > 1:
        against_first = run_distill(ctx.test, paths, dataclasses.replace(s, teachers=1), names=names)
        result = dataclasses.replace(result, students=against_first.students)
    return Section("distill", "ok", results=result, document=distill_view.document(result))
