"""Checks on what inference produced, before any metric sees it (one-line :class:`InputError`s)."""

from __future__ import annotations

import torch

from calibscope.errors import InputError
from calibscope.inference.outputs import Outputs


def validate_outputs(outputs: Outputs, *, source: str, num_classes: int | None = None, first_row: int = 0,
                     total_rows: int | None = None) -> None:
    """Finite logits, labels in range, class counts that agree.

    ``num_classes``: what the checkpoint's metadata claims, if anything. ``first_row`` / ``total_rows``: when
    ``outputs`` are rows ``first_row…`` of a larger set (a chunk, a rank's shard), messages give row numbers
    and counts of the whole.
    """
    logits, labels = outputs.logits, outputs.labels
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise InputError(f"{source}: expected logits of shape [N, K] with K ≥ 2 classes, got {tuple(logits.shape)}")
    if logits.shape[0] == 0:
        raise InputError(f"{source}: no examples (0 rows of logits)")
    bad = ~torch.isfinite(logits)
    if bool(bad.any()):
        rows = bad.any(dim=1).nonzero().flatten()
        part = total_rows is not None and not (first_row == 0 and logits.shape[0] == total_rows)
        whole = f" (rows {first_row}…{first_row + logits.shape[0] - 1} of {total_rows})" if part else ""
        raise InputError(f"{source}: {int(bad.sum())} logits are NaN or infinite, in {rows.numel()} of "
                         f"{logits.shape[0]} rows{whole} (first at row {first_row + int(rows[0])}); check the model "
                         "and inputs")
    k = logits.shape[1]
    if num_classes is not None and int(num_classes) != k:
        raise InputError(f"{source}: the checkpoint says {num_classes} classes but the model outputs {k} logits")
    if labels is None:
        return
    if labels.shape[0] != logits.shape[0]:
        raise InputError(f"{source}: {logits.shape[0]} rows of logits but {labels.shape[0]} labels")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        n_bad = int(((labels < 0) | (labels >= k)).sum())
        raise InputError(f"{source}: labels range over [{lo}, {hi}] but the model has {k} classes (0..{k - 1}); "
                         f"{n_bad} labels are out of range — is this the right dataset for this model?")
