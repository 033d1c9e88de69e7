"""Measure every OOD score on the shipped digits models (the tables of docs/ood.md and the README).

In-distribution: digits_test.npz (1347). OOD sets of the same size, numpy.random.default_rng(0): "shuffled"
(each test image's 64 pixels permuted) and "noise" (uniform uint8). Fit data: digits_train.npz; Gram's
normalisers: digits_val.npz. Prints markdown: AUROC / FPR@95TPR (OOD positive, the default) per score, then
selective classification (MSP) with AURC, E-AURC and AUGRC.

    .venv/bin/python scripts/ood_detector_table.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from calibscope.workflows.ood import OodSettings, run_ood
from calibscope.workflows.selective import SelectiveSettings, run_selective
from calibscope.workflows.session import Session

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"
SCORES = ("msp", "max-logit", "energy", "mahalanobis", "odin", "knn", "vim", "react", "ash", "gradnorm", "gram")


def ood_sets(root: Path) -> dict[str, Path]:
    images = np.load(SAMPLES / "digits_test.npz")["images"]
    g = np.random.default_rng(0)
    flat = images.reshape(len(images), -1)
    shuffled = np.stack([row[g.permutation(flat.shape[1])] for row in flat]).reshape(images.shape)
    noise = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
    out = {"shuffled": root / "shuffled.npz", "noise": root / "noise.npz"}
    np.savez(out["shuffled"], images=shuffled)
    np.savez(out["noise"], images=noise)
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sets = ood_sets(Path(tmp))
        print("| model | OOD | " + " | ".join(SCORES) + " |")
        print("|---|---|" + "---|" * len(SCORES))
        selective = []
        for model in ("hard", "ls", "sam"):
            path = SAMPLES / f"digits_{model}.safetensors"
            session = Session(SAMPLES / "digits_test.npz", use_cache=False)
            for name, ood in sets.items():
                r = run_ood(session, path, OodSettings(scores=SCORES), ood_data=ood, train=SAMPLES / "digits_train.npz",
                            val=SAMPLES / "digits_val.npz")
                cells = [f"{x.metrics.auroc:.3f} / {x.metrics.fpr_at_tpr:.2f}" for x in r.report.results]
                print(f"| `digits_{model}` | {name} | " + " | ".join(cells) + " |")
            s = run_selective(session, path, SelectiveSettings(scores=("msp",), target_risk=0.01)).reports[0]
            selective.append((model, s))
        print()
        print("| model | AURC | E-AURC | AUGRC | AUGRC* | accuracy at 90 % coverage | coverage at 1 % risk |")
        print("|---|---|---|---|---|---|---|")
        for model, s in selective:
            at90 = next(p for p in s.at_coverage if p.target_coverage == 0.9)
            print(f"| `digits_{model}` | {s.aurc:.4f} | {s.excess_aurc:.4f} | {s.augrc:.4f} | {s.augrc_optimal:.4f} | "
                  f"{100 * at90.accuracy:.2f} % | {100 * s.at_risk.coverage:.1f} % |")


if __name__ == "__main__":
    main()
