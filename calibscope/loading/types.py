"""What loading produces: a model (or precomputed logits) and a dataset. No metric lives here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from calibscope.feeding import KeywordInputs

ModelFormat = Literal["export", "torchscript", "state_dict", "safetensors", "pickle", "huggingface", "onnx",
                      "aoti"]
LogitsFormat = Literal["npz", "npy", "pt", "safetensors", "csv"]


@dataclass(frozen=True)
class ModelCheckpoint:
    """A runnable classifier.

    ``module`` is on the CPU in eval mode. ``metadata`` holds what the file says about itself, with these
    well-known keys when present: ``arch`` (str), ``arch_kwargs`` (dict), ``mean`` / ``std`` (lists of
    per-channel floats, applied after uint8 → [0, 1]), ``class_names`` (list of str), ``num_classes`` (int).
    """

    module: torch.nn.Module
    format: ModelFormat
    path: Path
    sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LogitsCheckpoint:
    """Precomputed outputs of some model: ``logits`` float32 ``[N, K]``, optional ``labels`` int64 ``[N]``.

    ``from_probabilities`` is True when the file held probabilities (rows ≥ 0 summing to 1), which were turned
    into logits with ``log`` (softmax of the result gives back the probabilities).
    """

    logits: torch.Tensor
    labels: torch.Tensor | None
    format: LogitsFormat
    path: Path
    sha256: str
    from_probabilities: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)


Checkpoint = ModelCheckpoint | LogitsCheckpoint


@dataclass(frozen=True)
class Dataset:
    """Examples and labels held in memory.

    ``inputs``: ``[N, ...]``; images are NCHW and stay ``uint8`` (values 0–255) until they reach the device,
    integer data (token ids) int64, other data float32; or named inputs
    (:class:`~calibscope.feeding.KeywordInputs`: ``input_ids``, ``attention_mask`` …, fed by keyword).
    ``labels``: int64 ``[N]`` or None. ``sha256``: a content hash of what was loaded
    (used for cache keys and same-data warnings).
    """

    inputs: torch.Tensor | KeywordInputs
    labels: torch.Tensor | None
    source: Path
    format: str
    sha256: str
    class_names: tuple[str, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def is_image(self) -> bool:
        return self.inputs.ndim == 4


@dataclass(frozen=True)
class LogitsRows:
    """Precomputed logits left on disk and read by rows: a file too big to load, or one rank's shard of one.

    ``array``: the stored ``logits`` or ``probs`` ``[N, K]`` (:class:`~calibscope.loading.files.StoredArray`);
    ``labels``: int64 ``[N]`` or None (read whole: 8 bytes per example). ``from_probabilities``: the file holds
    probabilities (decided over every row by the rule of :class:`LogitsCheckpoint`); :meth:`read` then returns
    their ``log`` as :func:`~calibscope.loading.checkpoint.load_checkpoint` does.
    """

    array: Any  # calibscope.loading.files.StoredArray
    labels: torch.Tensor | None
    format: LogitsFormat
    path: Path
    sha256: str
    from_probabilities: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None

    @property
    def num_examples(self) -> int:
        n = len(self.array)
        return n if self.limit is None else min(n, self.limit)

    @property
    def num_classes(self) -> int:
        return int(self.array.shape[1])

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Logits rows ``[start, stop)`` as float32 ``[stop - start, K]``."""
        import torch

        x = self.array.rows(start, min(stop, self.num_examples)).to(torch.float32)
        if self.from_probabilities:
            x = torch.log(torch.clamp(x, min=torch.finfo(torch.float32).tiny))
        return x
