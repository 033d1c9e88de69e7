"""Diagnostics: pure functions of tensors that return frozen dataclasses (one module per diagnostic).

``from calibscope.diagnostics import expected_calibration_error`` works; the defining module (and torch) is
imported on first access, so importing this package stays cheap.
"""

from __future__ import annotations

# public name → module that defines it (imported on first access)
_LAZY = {
    "CalibrationReport": "calibscope.diagnostics.calibration",
    "CalibrationStats": "calibscope.diagnostics.calibration",
    "ConfidenceBins": "calibscope.diagnostics.calibration",
    "ReliabilityBins": "calibscope.diagnostics.calibration",
    "calibration_definition": "calibscope.diagnostics.calibration",
    "calibration_report": "calibscope.diagnostics.calibration",
    "calibration_stats": "calibscope.diagnostics.calibration",
    "confidence_bins": "calibscope.diagnostics.calibration",
    "expected_calibration_error": "calibscope.diagnostics.calibration",
    "summarize": "calibscope.diagnostics.calibration",
    "CalibrationMetrics": "calibscope.diagnostics.calibration",
    "calibration_metrics": "calibscope.diagnostics.calibration",
    "calibration_sums": "calibscope.diagnostics.calibration",
    "adaptive_calibration_error": "calibscope.diagnostics.calibration",
    "classwise_calibration_error": "calibscope.diagnostics.calibration",
    "debiased_calibration_error": "calibscope.diagnostics.calibration",
    "smooth_calibration_error": "calibscope.diagnostics.calibration",
    "StreamingCalibration": "calibscope.diagnostics.streaming",
    "TemperatureFit": "calibscope.diagnostics.temperature",
    "fit_temperature": "calibscope.diagnostics.temperature",
    "apply_temperature": "calibscope.diagnostics.temperature",
    "temperature_sweep": "calibscope.diagnostics.temperature",
    "Calibrator": "calibscope.diagnostics.calibrators",
    "fit_calibrator": "calibscope.diagnostics.calibrators",
    "apply_calibrator": "calibscope.diagnostics.calibrators",
    "SoftTargets": "calibscope.diagnostics.distillation",
    "soft_targets": "calibscope.diagnostics.distillation",
    "student_agreement": "calibscope.diagnostics.distillation",
    "PlaneProjection": "calibscope.diagnostics.projection",
    "plane_projection": "calibscope.diagnostics.projection",
    "most_confused_classes": "calibscope.diagnostics.projection",
    "LogitGapMutualInformation": "calibscope.diagnostics.mutual_information",
    "logit_gap_mutual_information": "calibscope.diagnostics.mutual_information",
    "max_softmax_score": "calibscope.diagnostics.ood",
    "max_logit_score": "calibscope.diagnostics.ood",
    "energy_score": "calibscope.diagnostics.ood",
    "fit_class_gaussians": "calibscope.diagnostics.ood",
    "mahalanobis_score": "calibscope.diagnostics.ood",
    "detection_metrics": "calibscope.diagnostics.ood",
    "ood_report": "calibscope.diagnostics.ood",
    "risk_coverage": "calibscope.diagnostics.selective",
    "selective_report": "calibscope.diagnostics.selective",
    "area_under_risk_coverage": "calibscope.diagnostics.selective",
    "HessianSpectrum": "calibscope.diagnostics.hessian",
    "top_hessian_eigenvalues": "calibscope.diagnostics.hessian",
    "hutchinson_trace": "calibscope.diagnostics.hessian",
    "lanczos_top_eigenvalues": "calibscope.diagnostics.hessian",
    "RhoSharpness": "calibscope.diagnostics.sharpness",
    "rho_sharpness": "calibscope.diagnostics.sharpness",
    "LossSurface": "calibscope.diagnostics.landscape",
    "LossLine": "calibscope.diagnostics.landscape",
    "loss_surface": "calibscope.diagnostics.landscape",
    "loss_along_line": "calibscope.diagnostics.landscape",
    "hutchplusplus_trace": "calibscope.diagnostics.trace",
    "ConformalCalibration": "calibscope.diagnostics.conformal",
    "ConformalReport": "calibscope.diagnostics.conformal",
    "conformal_calibrate": "calibscope.diagnostics.conformal",
    "conformal_report": "calibscope.diagnostics.conformal",
    "conformal_scores": "calibscope.diagnostics.conformal",
    "conformal_quantile": "calibscope.diagnostics.conformal",
    "prediction_sets": "calibscope.diagnostics.conformal",
    "knn_score": "calibscope.diagnostics.ood_detectors",
    "fit_vim": "calibscope.diagnostics.ood_detectors",
    "vim_score": "calibscope.diagnostics.ood_detectors",
    "react_threshold": "calibscope.diagnostics.ood_detectors",
    "react_score": "calibscope.diagnostics.ood_detectors",
    "ash_score": "calibscope.diagnostics.ood_detectors",
    "gradnorm_score": "calibscope.diagnostics.ood_detectors",
    "odin_inputs": "calibscope.diagnostics.ood_detectors",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'calibscope.diagnostics' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
