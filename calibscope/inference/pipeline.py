"""From a loaded checkpoint and dataset to validated :class:`Outputs`, through the cache.

A logits file needs no model: its logits are used as they are (labels from the file or the dataset).
A model runs once through :func:`run_inference`; normalisation comes from the options or, failing that,
from the checkpoint's metadata (``mean``/``std``). Under ``torchrun`` (once
:func:`calibscope.inference.distributed.init_from_environment` joined the ranks) each rank runs its contiguous
shard and every rank receives all outputs (:func:`~calibscope.inference.engine.run_inference_sharded`); the
cache is used only when every rank finds the entry, and only rank 0 writes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from calibscope.errors import InputError
from calibscope.inference import cache as _cache
from calibscope.inference import distributed
from calibscope.inference.engine import (
    InferenceOptions,
    run_inference,
    run_inference_sharded,
    with_checkpoint_normalisation,
)
from calibscope.inference.outputs import Outputs
from calibscope.inference.validate import validate_outputs

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.loading.types import Checkpoint, Dataset, LogitsRows


def compute_outputs(
    checkpoint: Checkpoint,
    dataset: Dataset | None,
    options: InferenceOptions | None = None,
    *,
    use_cache: bool = True,
    progress: bool | None = None,
    model_key: dict[str, Any] | None = None,
) -> Outputs:
    """Logits and labels for ``checkpoint`` on ``dataset`` (validated: finite, labels in range).

    ``model_key``: what identifies the model for the output cache (default :func:`default_model_key`: the
    file's SHA-256 and the architecture it was built with); see :func:`outputs_key`."""
    from calibscope.loading.types import LogitsCheckpoint

    options = options or InferenceOptions()
    source = f"'{checkpoint.path}'"
    if isinstance(checkpoint, LogitsCheckpoint):
        outputs = _from_logits_file(checkpoint, dataset)
    else:
        if dataset is None:
            raise InputError(f"{source} is a model: pass the data to run it on with --data FILE")
        check_input_size(checkpoint, dataset)
        key = outputs_key(model_key or default_model_key(checkpoint), dataset, options)
        options = with_checkpoint_normalisation(options, checkpoint.metadata)
        group = distributed.current()
        outputs = _cache.load_cached(key) if use_cache else None
        if group is not None and not group.all_true(outputs is not None):
            outputs = None  # some rank lacks the entry (no shared file system): every rank computes its shard
        if outputs is None:
            if group is None:
                outputs = run_inference(checkpoint.module, dataset.inputs, options=options, progress=progress)
            else:
                outputs = run_inference_sharded(checkpoint.module, dataset.inputs, group=group, options=options,
                                                progress=progress)
            outputs = replace(outputs, meta={**outputs.meta, "cache": "miss" if use_cache else "off"})
            if use_cache and (group is None or group.is_main):
                _cache.store(key, replace(outputs, meta={**outputs.meta, **_checkpoint_record(checkpoint)}))
        # the cache holds what the model computed; labels always come from the dataset as given
        meta = {k: v for k, v in outputs.meta.items() if k != "checkpoint_metadata"}
        outputs = replace(outputs, labels=dataset.labels, meta={**meta, "checkpoint_format": checkpoint.format,
                                         "checkpoint_sha256": checkpoint.sha256,
                                         "dataset_sha256": dataset.sha256, "dataset_format": dataset.format})
    validate_outputs(outputs, source=source, num_classes=checkpoint.metadata.get("num_classes"))
    return outputs


# what a cache entry records of the checkpoint, so that a hit needs no model (see cached_outputs)
_RECORDED_METADATA = ("num_classes", "class_names", "mean", "std", "input_size", "arch", "arch_kwargs")


def _checkpoint_record(checkpoint: Checkpoint) -> dict[str, Any]:
    import json

    metadata = {}
    for name in _RECORDED_METADATA:
        value = checkpoint.metadata.get(name)
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        if value is not None:
            metadata[name] = value
    return {"checkpoint_format": checkpoint.format, "checkpoint_sha256": checkpoint.sha256,
            "checkpoint_metadata": metadata}


def default_model_key(checkpoint: Checkpoint) -> dict[str, Any]:
    """The model's part of the cache key when the caller gives none: the file's SHA-256 and the architecture
    recorded in the checkpoint's metadata."""
    return {"file_sha256": checkpoint.sha256, "arch": checkpoint.metadata.get("arch"),
            "arch_kwargs": checkpoint.metadata.get("arch_kwargs")}


def outputs_key(model_key: dict[str, Any], dataset: Dataset, options: InferenceOptions) -> str:
    """The output cache key: the model (``model_key``: the checkpoint file's digest and how the model is built
    from it), the dataset's content digest and every option that changes the numbers, *before* the
    checkpoint's own normalisation is applied (that follows from the file) — so a lookup needs no model."""
    fields = asdict(replace(options, device=_device_kind(options.device)))
    if options.dropout_pass is None:  # deterministic runs keep the keys they had before MC-dropout existed
        del fields["dropout_pass"], fields["dropout_seed"]
    return _cache.cache_key(model=model_key, dataset=dataset.sha256, options=fields)


def cached_outputs(model_key: dict[str, Any], dataset: Dataset, options: InferenceOptions | None = None,
                   *, source: str = "") -> tuple[Outputs, dict[str, Any]] | None:
    """What :func:`compute_outputs` would return from the cache, without the model: ``(outputs, record)`` with
    ``record`` = ``{"checkpoint_format", "checkpoint_sha256", "checkpoint_metadata"}`` as stored when the
    entry was written, or None on a miss (then load the checkpoint and call :func:`compute_outputs`)."""
    options = options or InferenceOptions()
    outputs = _cache.load_cached(outputs_key(model_key, dataset, options))
    if outputs is None:
        return None
    meta = dict(outputs.meta)
    record = {"checkpoint_format": meta.pop("checkpoint_format", None),
              "checkpoint_sha256": meta.pop("checkpoint_sha256", None),
              "checkpoint_metadata": meta.pop("checkpoint_metadata", None)}
    if not isinstance(record["checkpoint_metadata"], dict) or not isinstance(record["checkpoint_format"], str) \
            or not isinstance(record["checkpoint_sha256"], str):
        return None  # an entry without the record (older calibscope): compute as usual
    outputs = replace(outputs, labels=dataset.labels, meta={
        **meta, "checkpoint_format": record["checkpoint_format"], "checkpoint_sha256": record["checkpoint_sha256"],
        "dataset_sha256": dataset.sha256, "dataset_format": dataset.format})
    validate_outputs(outputs, source=source, num_classes=record["checkpoint_metadata"].get("num_classes"))
    return outputs, record


def check_input_size(checkpoint, dataset) -> None:
    """A model whose preprocessing fixes the image size (``metadata["input_size"]`` [H, W], e.g. from a Hugging
    Face ``preprocessor_config.json``) gets images of that size, or an error: calibscope does not resize."""
    size = checkpoint.metadata.get("input_size")
    shape = tuple(dataset.inputs.shape)
    if size is None or len(shape) != 4 or list(shape[2:]) == list(size):
        return
    raise InputError(f"'{checkpoint.path}' expects {size[0]}×{size[1]} images (its preprocessing config) but "
                     f"'{dataset.source}' holds {shape[2]}×{shape[3]}; resize them the way the model's image "
                     "processor does before passing them")


def _device_kind(spec: str) -> str:
    from calibscope.inference.device import resolve_device

    return resolve_device(spec).type


def _from_logits_file(checkpoint, dataset) -> Outputs:
    labels = checkpoint.labels
    if labels is None and dataset is not None:
        labels = dataset.labels
        if labels is not None and labels.shape[0] != checkpoint.logits.shape[0]:
            raise InputError(f"'{checkpoint.path}' has {checkpoint.logits.shape[0]} rows of logits but "
                             f"'{dataset.source}' has {labels.shape[0]} labels")
    if labels is None:
        raise InputError(no_labels_message(checkpoint.path))
    return Outputs(logits=checkpoint.logits, labels=labels, meta={
        "device": "none (logits file)", "precision": "as stored", "checkpoint_format": checkpoint.format,
        "checkpoint_sha256": checkpoint.sha256, "from_probabilities": checkpoint.from_probabilities})


# ------------------------------------------------------------------------------------ one process's rows

CHUNK_ELEMENTS = 1 << 22  # logits per chunk (16 MB in float32): bounds the float64 working memory


@dataclass(frozen=True)
class OutputShard:
    """This process's rows ``[start, stop)`` of the outputs of a model on ``num_examples`` examples.

    One process: all rows. Under ``torchrun``: the rank's contiguous shard — the model ran only these rows, a
    logits file is read only there — so statistics are computed here and summed over the ranks, and no process
    ever holds all the logits. ``labels`` are the shard's (int64 ``[stop − start]``); :meth:`chunks` reads
    the logits chunk by chunk (from memory, or from disk for :class:`~calibscope.loading.types.LogitsRows`),
    validated as :func:`~calibscope.inference.validate.validate_outputs` validates whole outputs.
    """

    num_examples: int
    num_classes: int
    start: int
    stop: int
    labels: torch.Tensor
    meta: dict[str, Any]
    read: Callable[[int, int], torch.Tensor]  # rows [a, b) of the whole set (start ≤ a ≤ b ≤ stop) → float32
    source: str = ""
    claimed_classes: int | None = None

    def __len__(self) -> int:
        return self.stop - self.start

    def chunks(self, rows: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(logits [b, K] float32, labels [b] int64)`` over this shard, ``rows`` at a time (default: 2²² logits
        a chunk)."""
        rows = rows or max(1, CHUNK_ELEMENTS // max(self.num_classes, 1))
        for a in range(self.start, self.stop, rows):
            b = min(self.stop, a + rows)
            logits = self.read(a, b)
            labels = self.labels[a - self.start:b - self.start]
            validate_outputs(Outputs(logits=logits, labels=labels), source=self.source, first_row=a,
                             total_rows=self.num_examples, num_classes=self.claimed_classes)
            yield logits, labels

    def logits(self) -> torch.Tensor:
        """All of this shard's logits in memory, float32 ``[stop − start, K]`` (validated)."""
        parts = [z for z, _ in self.chunks()]
        return torch.cat(parts) if parts else torch.empty((0, self.num_classes), dtype=torch.float32)


def output_shard(
    checkpoint: Checkpoint | LogitsRows,
    dataset: Dataset | None,
    options: InferenceOptions | None = None,
    *,
    use_cache: bool = True,
    progress: bool | None = None,
    model_key: dict[str, Any] | None = None,
) -> OutputShard:
    """This process's rows of what :func:`compute_outputs` computes (all rows for one process).

    Under ``torchrun`` a model runs only the rank's shard (a cache entry found by every rank is sliced; a
    fresh result is gathered to rank 0 alone, to store it); a logits file, in memory or read by rows from disk
    (:class:`~calibscope.loading.types.LogitsRows`), is sliced. Labels come from the logits file or the dataset.
    """
    from calibscope.loading.types import LogitsCheckpoint, LogitsRows

    options = options or InferenceOptions()
    group = distributed.current()
    source = f"'{checkpoint.path}'"
    claimed = checkpoint.metadata.get("num_classes")
    if isinstance(checkpoint, (LogitsCheckpoint, LogitsRows)):
        if isinstance(checkpoint, LogitsRows):
            n, k, read = checkpoint.num_examples, checkpoint.num_classes, checkpoint.read
            file_labels = checkpoint.labels if checkpoint.labels is None else checkpoint.labels[:n]
        else:
            logits = checkpoint.logits
            n, k, file_labels = int(logits.shape[0]), int(logits.shape[1]), checkpoint.labels

            def read(a: int, b: int, logits=logits) -> torch.Tensor:
                return logits[a:b]
        labels = _logits_file_labels(checkpoint.path, n, file_labels, dataset)
        meta = {"device": "none (logits file)", "precision": "as stored", "checkpoint_format": checkpoint.format,
                "checkpoint_sha256": checkpoint.sha256, "from_probabilities": checkpoint.from_probabilities}
        if n == 0:
            raise InputError(f"{source}: no examples (0 rows of logits)")
        start, stop = (0, n) if group is None else group.shard(n)
        if group is not None:
            meta["distributed"] = {"world_size": group.world_size, "backend": group.backend}
        return OutputShard(n, k, start, stop, labels[start:stop], meta, read, source, claimed)
    if dataset is None:
        raise InputError(f"{source} is a model: pass the data to run it on with --data FILE")
    if dataset.labels is None:  # before running the model: the result would be unusable
        raise InputError(f"'{dataset.source}' has inputs but no labels: calibration compares predictions with "
                         "labels; store them beside the inputs (y / labels / targets)")
    if group is None:
        return as_shard(compute_outputs(checkpoint, dataset, options, use_cache=use_cache, progress=progress,
                                        model_key=model_key), checkpoint)
    check_input_size(checkpoint, dataset)
    key = outputs_key(model_key or default_model_key(checkpoint), dataset, options)
    options = with_checkpoint_normalisation(options, checkpoint.metadata)
    n = len(dataset)
    start, stop = group.shard(n)
    cached = _cache.load_cached_logits_rows(key) if use_cache else None
    if group.all_true(cached is not None):  # this rank's rows of the entry, read from disk
        logits, k = cached[0].rows(start, stop), int(cached[0].shape[1])
        meta = {key_: v for key_, v in cached[1].items() if key_ != "checkpoint_metadata"}
    else:
        local = None
        if stop > start:
            local = run_inference(checkpoint.module, dataset.inputs[start:stop], options=options,
                                  progress=progress if group.is_main else False)
        logits = local.logits if local is not None else None
        meta, k = group.broadcast_object(None if not group.is_main else (local.meta, local.num_classes))
        if use_cache:  # the whole result on rank 0 only, to store it
            whole = group.gather_rows(logits)
            if group.is_main:
                _cache.store(key, Outputs(logits=whole, labels=None,
                                          meta={**meta, "cache": "miss", **_checkpoint_record(checkpoint)}))
        meta = {**meta, "cache": "miss" if use_cache else "off"}
        if logits is None:
            logits = torch.empty((0, k), dtype=torch.float32)
    meta = {**meta, "checkpoint_format": checkpoint.format, "checkpoint_sha256": checkpoint.sha256,
            "dataset_sha256": dataset.sha256, "dataset_format": dataset.format,
            "distributed": {"world_size": group.world_size, "backend": group.backend}}
    local_logits = logits
    return OutputShard(n, k, start, stop, dataset.labels[start:stop], meta,
                       lambda a, b: local_logits[a - start:b - start], source, claimed)


def no_labels_message(path) -> str:
    """What to say when a logits file comes without labels (e.g. a bare ``.npy`` of logits)."""
    return (f"'{path}' holds logits but no labels: pass them with --labels FILE (class indices or one-hot rows, "
            "e.g. np.save('labels.npy', y)), save them in the file as 'labels', or pass --data with a labelled "
            "dataset in the same order")


def as_shard(outputs: Outputs, checkpoint: Checkpoint) -> OutputShard:
    """All rows of one process's ``outputs`` of ``checkpoint`` as an :class:`OutputShard`."""
    return OutputShard(outputs.num_examples, outputs.num_classes, 0, outputs.num_examples, outputs.labels,
                       outputs.meta, lambda a, b: outputs.logits[a:b], f"'{checkpoint.path}'",
                       checkpoint.metadata.get("num_classes"))


def _logits_file_labels(path, n: int, labels, dataset) -> torch.Tensor:
    if labels is None and dataset is not None:
        labels = dataset.labels
        if labels is not None and labels.shape[0] != n:
            raise InputError(f"'{path}' has {n} rows of logits but '{dataset.source}' has {labels.shape[0]} labels")
    if labels is None:
        raise InputError(no_labels_message(path))
    return labels
