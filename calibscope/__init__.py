"""calibscope — how trustworthy is a trained classifier?

The Python API is the same functions the command line calls; heavy modules are imported lazily so that
``import calibscope`` and ``calibscope --help`` stay fast. From a checkpoint to a result::

    >>> from calibscope import Session, run_calibration
    >>> result = run_calibration(Session("sample_checkpoints/digits_test.npz"),
    ...                          "sample_checkpoints/digits_hard.safetensors")
    >>> round(result.value, 4)
    0.0305

From tensors to a result::

    >>> import torch
    >>> from calibscope import expected_calibration_error
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.5, 0.0]])
    >>> round(expected_calibration_error(logits, torch.tensor([0, 1, 1, 0])), 4)
    0.4296
"""

from __future__ import annotations

__version__ = "0.1.0"

# public name → module that defines it (imported on first access, so that `import calibscope` and
# `calibscope --help` load no torch)
_LAZY = {
    # loading and inference
    "load_checkpoint": "calibscope.loading.checkpoint",
    "load_dataset": "calibscope.loading.dataset",
    "run_inference": "calibscope.inference.engine",
    "InferenceOptions": "calibscope.inference.engine",
    "Outputs": "calibscope.inference.outputs",
    "compute_outputs": "calibscope.inference.pipeline",
    # the application layer: what each command computes
    "Session": "calibscope.workflows.session",
    "CalibrationSettings": "calibscope.workflows.calibration",
    "run_calibration": "calibscope.workflows.calibration",
    "TemperatureSettings": "calibscope.workflows.temperature",
    "run_temperature": "calibscope.workflows.temperature",
    "SelectiveSettings": "calibscope.workflows.selective",
    "run_selective": "calibscope.workflows.selective",
    "ConformalSettings": "calibscope.workflows.conformal",
    "run_conformal": "calibscope.workflows.conformal",
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
    "ReportSettings": "calibscope.workflows.report",
    "run_report": "calibscope.workflows.report",
    "Gate": "calibscope.workflows.gate",
    "ece_gate": "calibscope.workflows.gate",
    # pure metrics on tensors
    "expected_calibration_error": "calibscope.diagnostics.calibration",
    "calibration_metrics": "calibscope.diagnostics.calibration",
    "calibration_report": "calibscope.diagnostics.calibration",
    "calibration_stats": "calibscope.diagnostics.calibration",
    "StreamingCalibration": "calibscope.diagnostics.streaming",
    "fit_temperature": "calibscope.diagnostics.temperature",
    "apply_temperature": "calibscope.diagnostics.temperature",
    "temperature_sweep": "calibscope.diagnostics.temperature",
    "risk_coverage": "calibscope.diagnostics.selective",
    "selective_report": "calibscope.diagnostics.selective",
    "max_softmax_score": "calibscope.diagnostics.ood",
    "max_logit_score": "calibscope.diagnostics.ood",
    "energy_score": "calibscope.diagnostics.ood",
    "fit_class_gaussians": "calibscope.diagnostics.ood",
    "mahalanobis_score": "calibscope.diagnostics.ood",
    "detection_metrics": "calibscope.diagnostics.ood",
    "ood_report": "calibscope.diagnostics.ood",
    "conformal_report": "calibscope.diagnostics.conformal",
    "plane_projection": "calibscope.diagnostics.projection",
    "logit_gap_mutual_information": "calibscope.diagnostics.mutual_information",
    "top_hessian_eigenvalues": "calibscope.diagnostics.hessian",
    "rho_sharpness": "calibscope.diagnostics.sharpness",
    "loss_surface": "calibscope.diagnostics.landscape",
    "loss_along_line": "calibscope.diagnostics.landscape",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'calibscope' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
