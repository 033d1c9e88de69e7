"""calibscope — how trustworthy is a trained classifier?

The Python API is the same functions the command line calls; heavy modules are imported lazily so that
``import calibscope`` and ``calibscope --help`` stay fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

# public name → module that defines it (imported on first access)
_LAZY = {
    "load_checkpoint": "calibscope.loading.checkpoint",
    "load_dataset": "calibscope.loading.dataset",
    "run_inference": "calibscope.inference.engine",
    "Outputs": "calibscope.inference.outputs",
    "compute_outputs": "calibscope.inference.pipeline",
    "calibration_stats": "calibscope.diagnostics.calibration",
    "calibration_report": "calibscope.diagnostics.calibration",
    "expected_calibration_error": "calibscope.diagnostics.calibration",
    "calibration_metrics": "calibscope.diagnostics.calibration",
    "StreamingCalibration": "calibscope.diagnostics.streaming",
    "fit_temperature": "calibscope.diagnostics.temperature",
    "plane_projection": "calibscope.diagnostics.projection",
    "logit_gap_mutual_information": "calibscope.diagnostics.mutual_information",
    "top_hessian_eigenvalues": "calibscope.diagnostics.hessian",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'calibscope' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
