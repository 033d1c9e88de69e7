"""The one product of inference: logits, labels, optional penultimate features and class templates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class Outputs:
    """``logits`` float32 ``[N, K]`` and ``labels`` int64 ``[N]`` (or None), on the CPU.

    ``features`` ``[N, D]``: input of the final linear layer (penultimate activations), when captured;
    ``weight`` ``[K, D]`` / ``bias`` ``[K]``: that layer's parameters (the class templates).
    ``meta``: how they were produced (device, precision, batch size, hashes, formats, timings).
    ``member_logits`` float32 ``[S, N, K]``: for an ensemble or MC-dropout (:mod:`calibscope.workflows.ensemble`),
    the logits of each of the S members / stochastic passes; ``logits`` are then the log of their mean softmax
    (float64), and the epistemic scores (:mod:`calibscope.diagnostics.ensemble`) read the members. None otherwise.
    """

    logits: torch.Tensor
    labels: torch.Tensor | None
    features: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    member_logits: torch.Tensor | None = None

    @property
    def num_examples(self) -> int:
        return int(self.logits.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[1])
