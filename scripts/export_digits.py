"""Export the UCI optical handwritten digits to ``sample_checkpoints/digits.npz`` (run once).

Source: scikit-learn's bundled copy of the UCI ML "Optical Recognition of Handwritten Digits" test set
(Alpaydin & Kaynak 1998; 1797 images, 8×8, values 0..16; licence CC BY 4.0). scikit-learn is needed only to
run this script; calibscope itself never imports it.

Written keys:

* ``images``: uint8 ``[1797, 1, 8, 8]`` = ``round(v · 255 / 16)``, so calibscope's uint8 → ``/255``
  convention gives ``v / 16`` in [0, 1] (up to the uint8 rounding, at most 1/510).
* ``labels``: int64 ``[1797]``, 0..9.
* ``class_names``: ``'0'`` .. ``'9'``.

Usage: ``python scripts/export_digits.py [--out sample_checkpoints/digits.npz]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "sample_checkpoints" / "digits.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    from sklearn.datasets import load_digits

    bunch = load_digits()
    values = np.asarray(bunch.images, dtype=np.float64)  # [1797, 8, 8], integers 0..16
    if values.min() < 0 or values.max() > 16 or not np.array_equal(values, np.round(values)):
        raise SystemExit("unexpected pixel values in load_digits(): expected integers in 0..16")
    images = np.round(values * 255.0 / 16.0).astype(np.uint8)[:, None, :, :]
    labels = np.asarray(bunch.target, dtype=np.int64)
    class_names = np.array([str(int(c)) for c in bunch.target_names])

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.npz")
    np.savez_compressed(tmp, images=images, labels=labels, class_names=class_names)
    tmp.replace(args.out)
    counts = np.bincount(labels, minlength=len(class_names))
    print(
        f"wrote {args.out} ({args.out.stat().st_size} bytes): images {images.shape} {images.dtype}, "
        f"labels {labels.shape} {labels.dtype}, per class {counts.tolist()}"
    )


if __name__ == "__main__":
    main()
