"""The application layer: a :class:`Session` (datasets, checkpoints, the output cache, the normalisation rule)
and one ``run_<diagnostic>(session, checkpoint(s), settings) -> result`` per diagnostic, plus the gate.

The command line, the report and Python users all call these; nothing here prints or exits. Each module
holds one diagnostic's settings dataclass (defaults defined there, once) and its run function:

============================  ====================================  =====================================
module                        settings                              run
============================  ====================================  =====================================
``workflows.calibration``     :class:`CalibrationSettings`          :func:`run_calibration` → EceResult
``workflows.temperature``     :class:`TemperatureSettings`          :func:`run_temperature`
``workflows.selective``       :class:`SelectiveSettings`            :func:`run_selective`
``workflows.ood``             :class:`OodSettings`                  :func:`run_ood`
``workflows.projection``      :class:`ProjectionSettings`           :func:`run_projection` → ProjectionRun
``workflows.mi``              :class:`MiSettings`                   :func:`run_mi` → MiRun
``workflows.hessian``         :class:`HessianSettings`              :func:`run_hessian` → [HessianResult]
``workflows.landscape``       :class:`LandscapeSettings`            :func:`run_landscape` → LandscapeResult
``workflows.gate``            :class:`Check`, :class:`Gate`,        :func:`ece_gate`, :func:`lambda1_checks`
                              :class:`Baseline`
============================  ====================================  =====================================
"""

from __future__ import annotations

_LAZY = {
    "Session": "calibscope.workflows.session",
    "display_names": "calibscope.workflows.session",
    "CalibrationSettings": "calibscope.workflows.calibration",
    "run_calibration": "calibscope.workflows.calibration",
    "TemperatureSettings": "calibscope.workflows.temperature",
    "FixedTemperature": "calibscope.workflows.temperature",
    "run_temperature": "calibscope.workflows.temperature",
    "SelectiveSettings": "calibscope.workflows.selective",
    "run_selective": "calibscope.workflows.selective",
    "OodSettings": "calibscope.workflows.ood",
    "run_ood": "calibscope.workflows.ood",
    "ProjectionSettings": "calibscope.workflows.projection",
    "run_projection": "calibscope.workflows.projection",
    "MiSettings": "calibscope.workflows.mi",
    "run_mi": "calibscope.workflows.mi",
    "HessianSettings": "calibscope.workflows.hessian",
    "run_hessian": "calibscope.workflows.hessian",
    "LandscapeSettings": "calibscope.workflows.landscape",
    "run_landscape": "calibscope.workflows.landscape",
    "ConformalSettings": "calibscope.workflows.conformal",
    "run_conformal": "calibscope.workflows.conformal",
    "ReportSettings": "calibscope.workflows.report",
    "run_report": "calibscope.workflows.report",
    "Check": "calibscope.workflows.gate",
    "Gate": "calibscope.workflows.gate",
    "Baseline": "calibscope.workflows.gate",
    "read_baseline": "calibscope.workflows.gate",
    "ece_gate": "calibscope.workflows.gate",
    "lambda1_checks": "calibscope.workflows.gate",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'calibscope.workflows' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
