"""Sentences derived from measured numbers, for the report, compare and the command tables.

Each function reads results and says only what their values support: which model is lowest and highest, by
how much, and where a comparison is not like for like (λ1 at different training losses, MI under an
augmentation that changes the predictions). Nothing here computes a metric; with one model there is no
comparison and the functions return None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["hessian_finding", "mi_finding", "projection_finding"]

_LOSS_RATIO = 1.5  # training losses further apart than this make a λ1 comparison not like for like


def _extremes(items: Sequence[Any], value: Callable[[Any], float]) -> tuple[Any, Any] | None:
    if len(items) < 2:
        return None
    ordered = sorted(items, key=value)
    return ordered[0], ordered[-1]


def mi_finding(results: Sequence[Any]) -> str | None:
    """Whose Î is lower, by how much against the repetition spread, and whether the premise held."""
    pair = _extremes(results, lambda r: r.estimate.nats)
    if pair is None:
        return None
    low, high = pair
    diff = high.estimate.nats - low.estimate.nats
    spread = max(low.estimate.spread_nats or 0.0, high.estimate.spread_nats or 0.0)
    text = (f"Î is lowest for {low.name} ({low.estimate.nats:.3f} nats) and highest for {high.name} "
            f"({high.estimate.nats:.3f} nats)")
    if spread > 0:
        text += (f"; the difference ({diff:.3f}) is {diff / spread:.1f}× the larger repetition spread"
                 + ("" if diff > 2 * spread else ", not clearly more than the noise"))
    text += "."
    failed = [r.name for r in results if getattr(r, "check", None) is not None and not r.check.premise_holds]
    if failed:
        text += (f" The augmentation changes the training predictions of {', '.join(failed)} (agreement below "
                 "90 %): there Î measures the augmentation, not the model.")
    return text


def hessian_finding(results: Sequence[Any]) -> str | None:
    """Whose λ1 is lower, at what training loss, and whether the losses are comparable."""
    pair = _extremes(results, lambda r: r.spectrum.eigenvalues[0])
    if pair is None:
        return None
    low, high = pair
    l1_low, l1_high = low.spectrum.eigenvalues[0], high.spectrum.eigenvalues[0]
    ratio = l1_high / l1_low if l1_low > 0 else float("inf")
    text = (f"{low.name} has the lower λ1 ({l1_low:.3g}, at training loss {low.spectrum.loss:.2g}), {high.name} "
            f"the higher ({l1_high:.3g}, at training loss {high.spectrum.loss:.2g}): {ratio:.2g}× apart.")
    losses = sorted((low.spectrum.loss, high.spectrum.loss))
    if losses[0] > 0 and losses[1] / losses[0] > _LOSS_RATIO:
        text += (f" Their training losses differ {losses[1] / losses[0]:.2g}×; λ1 falls with the loss (scaling a "
                 "model's logits up lowers both), so this is not a like-for-like comparison of flatness — compare "
                 "at matched training loss or with a scale-invariant sharpness (calibscope.diagnostics.sharpness).")
    return text


def projection_finding(results: Sequence[Any], split: str) -> str | None:
    """Whose clusters are tighter (smaller relative spread in the plane) on ``split``."""
    rows = []
    for r in results:
        hit = next((s for s in r.splits if s.split == split), None)
        if hit is not None:
            rows.append((r.name, hit.projection.statistics.relative_spread_plane))
    pair = _extremes(rows, lambda t: t[1])
    if pair is None:
        return None
    (tight, a), (loose, b) = pair
    return (f"On {split}, {tight}'s clusters are the tightest (relative spread {a:.3f}) and {loose}'s the loosest "
            f"({b:.3f}).")
