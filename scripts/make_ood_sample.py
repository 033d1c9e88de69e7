"""Write ``sample_checkpoints/digits_shuffled.npz``: an out-of-distribution set for the README's ``ood`` examples.

Every test digit (``digits_test.npz``, 1,347 images) with its 64 pixels permuted, image by image, by
``numpy.random.default_rng(0)``: the same intensities, no digit shape. Key ``images`` (uint8 ``[N, 1, 8, 8]``),
no labels. Deterministic: the same bytes on every run. The tests and ``scripts/ood_detector_table.py`` build the
same set from the same seed.

    python scripts/make_ood_sample.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"


def shuffled_digits(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each image's pixels permuted by its own draw of ``default_rng(seed)`` (drawn in order)."""
    g = np.random.default_rng(seed)
    flat = images.reshape(len(images), -1)
    return np.stack([row[g.permutation(flat.shape[1])] for row in flat]).reshape(images.shape)


def main() -> None:
    images = np.load(SAMPLES / "digits_test.npz")["images"]
    out = SAMPLES / "digits_shuffled.npz"
    np.savez(out, images=shuffled_digits(images))
    print(f"wrote {out} ({out.stat().st_size} bytes, {len(images)} images)")


if __name__ == "__main__":
    main()
