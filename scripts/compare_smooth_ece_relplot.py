"""Smooth ECE: calibscope against relplot.smECE on the shipped digits_hard test logits (docs/calibration.md).

Also evaluates smECE_σ by a direct sum of reflected Gaussian kernels on 20,001 nodes at each tool's answer:
the fixed point of smECE_σ = σ is where the two agree. Run: .venv/bin/python scripts/compare_smooth_ece_relplot.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import relplot
import torch
from scipy.stats import norm

from calibscope.diagnostics.calibration import smooth_calibration_error

ROOT = Path(__file__).resolve().parents[1]


def direct(conf: np.ndarray, residual: np.ndarray, sigma: float, nodes: int = 20001) -> float:
    """∫₀¹ |(1/n) Σ_i K_σ(t, c_i) r_i| dt, K_σ the Gaussian reflected at 0 and 1 (images 2k ± c, |k| ≤ 3)."""
    t = np.linspace(0.0, 1.0, nodes)
    total = np.zeros(nodes)
    for k in range(-3, 4):
        for image in (2 * k + conf, 2 * k - conf):
            total += (norm.pdf((t[:, None] - image[None, :]) / sigma) / sigma) @ residual
    return float(np.trapezoid(np.abs(total / len(conf)), t))


def compare(name: str, conf: np.ndarray, correct: np.ndarray) -> None:
    # ten-class logits whose top-label confidence is exactly `conf` (class 0, right when `correct`)
    rest = np.log(np.clip((1.0 - conf) / 9, 1e-300, 1.0))
    logits = torch.from_numpy(np.concatenate([np.log(conf)[:, None], np.repeat(rest[:, None], 9, axis=1)], axis=1))
    labels = torch.from_numpy(np.where(correct == 1, 0, 1))
    ours, sigma = smooth_calibration_error(logits, labels)
    theirs = float(relplot.smECE(conf, correct))
    residual = conf - correct
    print(f"{name}: calibscope {ours:.6f} (σ* {sigma:.6f}); relplot {theirs:.6f}; relplot/calibscope − 1 = "
          f"{100 * (theirs / ours - 1):+.1f} %; direct smECE_σ at σ = calibscope {direct(conf, residual, ours):.6f}, "
          f"at σ = relplot {direct(conf, residual, theirs):.6f}")


def main() -> None:
    d = np.load(ROOT / "sample_checkpoints" / "digits_hard_test_logits.npz")
    p = torch.softmax(torch.from_numpy(d["logits"]).double(), dim=1)
    conf = p.max(dim=1).values.numpy()
    correct = (p.argmax(dim=1).numpy() == d["labels"]).astype(float)
    compare("digits_hard test logits", conf, correct)
    compare("same, confidences moved up onto the 15-bin edges", np.ceil(conf * 15) / 15, correct)


if __name__ == "__main__":
    main()
