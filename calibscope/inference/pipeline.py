"""From a loaded checkpoint and dataset to validated :class:`Outputs`, through the cache.

A logits file needs no model: its logits are used as they are (labels from the file or the dataset).
A model runs once through :func:`run_inference`; normalisation comes from the options or, failing that,
from the checkpoint's metadata (``mean``/``std``).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import TYPE_CHECKING

from calibscope.errors import InputError
from calibscope.inference import cache as _cache
from calibscope.inference.engine import InferenceOptions, run_inference
from calibscope.inference.outputs import Outputs
from calibscope.inference.validate import validate_outputs

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.loading.types import Checkpoint, Dataset


def compute_outputs(
    checkpoint: Checkpoint,
    dataset: Dataset | None,
    options: InferenceOptions | None = None,
    *,
    use_cache: bool = True,
    progress: bool | None = None,
) -> Outputs:
    """Logits and labels for ``checkpoint`` on ``dataset`` (validated: finite, labels in range)."""
    from calibscope.loading.types import LogitsCheckpoint

    options = options or InferenceOptions()
    source = f"'{checkpoint.path}'"
    if isinstance(checkpoint, LogitsCheckpoint):
        outputs = _from_logits_file(checkpoint, dataset)
    else:
        if dataset is None:
            raise InputError(f"{source} is a model: pass the data to run it on with --data FILE")
        if options.mean is None and checkpoint.metadata.get("mean") is not None:
            meta = checkpoint.metadata
            options = replace(options, mean=tuple(map(float, meta["mean"])), std=tuple(map(float, meta["std"])))
        key = _cache.cache_key(checkpoint=checkpoint.sha256, dataset=dataset.sha256,
                               options=asdict(replace(options, device=_device_kind(options.device))))
        outputs = _cache.load_cached(key) if use_cache else None
        if outputs is None:
            outputs = run_inference(checkpoint.module, dataset.inputs, options=options, progress=progress)
            outputs = replace(outputs, meta={**outputs.meta, "cache": "miss" if use_cache else "off"})
            if use_cache:
                _cache.store(key, outputs)
        # the cache holds what the model computed; labels always come from the dataset as given
        outputs = replace(outputs, labels=dataset.labels, meta={**outputs.meta, "checkpoint_format": checkpoint.format,
                                         "checkpoint_sha256": checkpoint.sha256,
                                         "dataset_sha256": dataset.sha256, "dataset_format": dataset.format})
    validate_outputs(outputs, source=source, num_classes=checkpoint.metadata.get("num_classes"))
    return outputs


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
        raise InputError(f"'{checkpoint.path}' holds no labels: save them in the file as 'labels' or pass "
                         "--data with a labelled dataset in the same order")
    return Outputs(logits=checkpoint.logits, labels=labels, meta={
        "device": "none (logits file)", "precision": "as stored", "checkpoint_format": checkpoint.format,
        "checkpoint_sha256": checkpoint.sha256, "from_probabilities": checkpoint.from_probabilities})
