"""The :class:`Session`: one dataset, the checkpoints run on it, the output cache and the normalisation rule.

A session is what every ``run_*`` workflow takes: it loads the dataset once and each checkpoint once (shared
with the sessions :meth:`Session.for_data` derives for other data sets — validation, training, OOD), and
turns them into validated :class:`~calibscope.inference.outputs.Outputs` through the on-disk output cache,
keeping each result in memory for the rest of the session. Nothing here prints.

Example (a shipped sample model)::

    >>> from calibscope import Session
    >>> s = Session("sample_checkpoints/digits_test.npz")
    >>> outputs, ckpt = s.outputs("sample_checkpoints/digits_hard.safetensors")
    >>> outputs.logits.shape
    torch.Size([1347, 10])
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibscope.errors import ArgumentError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.inference.engine import InferenceOptions
    from calibscope.inference.outputs import Outputs
    from calibscope.inference.pipeline import OutputShard
    from calibscope.loading.types import Checkpoint, Dataset
    from calibscope.workflows.ensemble import Predictive

STREAM_MIN_BYTES_ENV = "CALIBSCOPE_STREAM_MIN_BYTES"
STREAM_MIN_BYTES = 256 << 20  # logits files at least this big are read by rows, not into memory


class NoDataError(InputError):
    """A model must run but the session has no dataset (``argument`` names what is missing: ``data``)."""

    argument = "data"


class Session:
    """Datasets, checkpoints and the output cache of one piece of work.

    Args:
        data: the dataset (any format :func:`~calibscope.loading.dataset.load_dataset` reads), or None when
            only logits files that carry their labels are evaluated.
        split, label_column, limit: passed to :func:`~calibscope.loading.dataset.load_dataset`; ``limit`` also
            cuts the rows of logits files.
        arch, arch_kwargs, trust, prefix: passed to :func:`~calibscope.loading.checkpoint.load_checkpoint`.
        output: which of a non-tensor model output holds the logits (``--output KEY|INDEX``).
        labels: a labels file for logits files that hold none (``--labels``;
            :func:`~calibscope.loading.labels.load_labels`); not passed on to :meth:`for_data` sessions.
        device, precision, batch_size, mean, std, capture_features, layer: the
            :class:`~calibscope.inference.engine.InferenceOptions`; ``mean``/``std`` None means "from the
            checkpoint's metadata" (:meth:`options_for`).
        use_cache: read and write the output cache (``$CALIBSCOPE_CACHE_DIR`` or ``.calibscope/cache``).
        auto_threads: one intra-op thread while every model is tiny work (:mod:`calibscope.workflows.threads`;
            the command line's choice — it changes torch's process-wide setting).
    """

    def __init__(self, data: Path | str | None = None, *, split: str | None = None,
                 label_column: str | None = None, limit: int | None = None, arch: str | None = None,
                 arch_kwargs: dict[str, Any] | None = None, trust: bool = False, prefix: str | None = None,
                 device: str = "auto",
                 precision: str = "fp32", batch_size: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 use_cache: bool = True, capture_features: bool = False, layer: str | None = None,
                 output: str | int | None = None, labels: Path | str | None = None,
                 dropout_pass: int | None = None, dropout_seed: int = 0, auto_threads: bool = False,
                 _shared: dict[str, dict] | None = None):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
            raise ArgumentError("limit", f"`limit` must be an integer larger than 0, got {limit!r}")
        self.data_path = None if data is None else Path(data)
        self.split, self.label_column, self.limit = split, label_column, limit
        self.arch, self.arch_kwargs, self.trust, self.prefix = arch, arch_kwargs, trust, prefix
        self.device, self.precision, self.batch_size = device, precision, batch_size
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)
        self.use_cache, self.capture_features, self.layer = use_cache, capture_features, layer
        self.dropout_pass, self.dropout_seed = dropout_pass, dropout_seed
        from calibscope.model_outputs import parse_output_spec

        self.output, self.labels = parse_output_spec(output), None if labels is None else Path(labels)
        # loaded checkpoints and computed outputs, shared by every session derived from this one
        self._shared = _shared if _shared is not None else {"checkpoints": {}, "outputs": {}, "datasets": {}}
        if auto_threads and "threads" not in self._shared:
            from calibscope.workflows.threads import ThreadPolicy

            self._shared["threads"] = ThreadPolicy()

    # ------------------------------------------------------------------------------------------ derived

    def _replace(self, **changes: Any) -> Session:
        fields = dict(data=self.data_path, split=self.split, label_column=self.label_column, limit=self.limit,
                      arch=self.arch, arch_kwargs=self.arch_kwargs, trust=self.trust, prefix=self.prefix,
                      device=self.device,
                      precision=self.precision, batch_size=self.batch_size, mean=self.mean, std=self.std,
                      use_cache=self.use_cache, capture_features=self.capture_features, layer=self.layer,
                      output=self.output, labels=self.labels, dropout_pass=self.dropout_pass,
                      dropout_seed=self.dropout_seed)
        fields.update(changes)
        return Session(**fields, _shared=self._shared)

    def with_options(self, **changes: Any) -> Session:
        """The same data with some constructor arguments changed (e.g. ``capture_features=True``)."""
        return self._replace(**changes)

    def for_data(self, data: Path | str | None, *, split: str | None = None, prefer_split: str | None = None,
                 label_column: str | None = None, **changes: Any) -> Session:
        """A session for another dataset (validation, training, OOD) with the same model options, sharing the
        loaded checkpoints. ``prefer_split`` is taken where the source holds several splits, else the source's
        only one; ``label_column`` is kept only for CSV sources unless given."""
        changes.setdefault("labels", None)  # --labels belong to the main checkpoint's rows
        if label_column is None and data is not None:
            label_column = self.label_column if _is_text(Path(data)) else None
        if prefer_split is None or data is None:
            return self._replace(data=data, split=split, label_column=label_column, **changes)
        other = self._replace(data=data, split=prefer_split, label_column=label_column, **changes)
        try:
            other.dataset  # noqa: B018 - learn now whether the split exists
            return other
        except InputError:
            return self._replace(data=data, split=split, label_column=label_column, **changes)

    # ------------------------------------------------------------------------------------------ inputs

    @property
    def options(self) -> InferenceOptions:
        """The inference options, before the checkpoint's normalisation is applied (see :meth:`options_for`)."""
        from calibscope.inference.engine import InferenceOptions

        return InferenceOptions(device=self.device, precision=self.precision,
                                batch_size=self.batch_size,  # None: chosen from the input size and free memory
                                mean=self.mean, std=self.std, capture_features=self.capture_features,
                                layer=self.layer, output=self.output, dropout_pass=self.dropout_pass,
                                dropout_seed=self.dropout_seed)

    def options_for(self, checkpoint: Checkpoint) -> InferenceOptions:
        """:attr:`options` with ``mean``/``std`` from the checkpoint's metadata when the session sets none —
        the one normalisation rule of every command."""
        from calibscope.inference.engine import with_checkpoint_normalisation

        return with_checkpoint_normalisation(self.options, getattr(checkpoint, "metadata", {}) or {})

    @property
    def dataset(self) -> Dataset | None:
        """The dataset (loaded on first use), or None when the session has none."""
        if self.data_path is None:
            return None
        key = (str(self.data_path), self.split, self.label_column, self.limit)
        datasets = self._shared["datasets"]
        if key not in datasets:
            from calibscope.loading.dataset import load_dataset

            datasets[key] = load_dataset(self.data_path, limit=self.limit, split=self.split,
                                         label_column=self.label_column)
        return datasets[key]

    def require_dataset(self, why: str = "") -> Dataset:
        """The dataset, or :class:`NoDataError` saying ``why`` it is needed."""
        if self.data_path is None:
            raise NoDataError("no dataset given" + (f": {why}" if why else ""))
        return self.dataset

    def checkpoint(self, path: Path | str, *, keep: bool = True) -> Checkpoint:
        """The checkpoint at ``path``, loaded once per session family (``keep=False``: not kept for later)."""
        from calibscope.workflows.ensemble import Predictive

        if isinstance(path, Predictive):
            raise InputError(f"{path.name} is an ensemble / MC-dropout predictive distribution, not one network: "
                             "this needs a single checkpoint (drop --ensemble / --mc-dropout)")
        key = str(Path(path))
        checkpoints = self._shared["checkpoints"]
        if key in checkpoints:
            return checkpoints[key]
        from calibscope.loading.checkpoint import load_checkpoint

        checkpoint = self._with_labels(load_checkpoint(path, arch=self.arch, arch_kwargs=self.arch_kwargs,
                                                       trust=self.trust, prefix=self.prefix))
        if keep:
            checkpoints[key] = checkpoint
        return checkpoint

    def _with_labels(self, checkpoint: Any) -> Any:
        """``checkpoint`` with the labels of :attr:`labels` (a logits file only; the file's own must agree)."""
        if self.labels is None:
            return checkpoint
        from calibscope.loading.labels import load_labels
        from calibscope.loading.types import LogitsCheckpoint, LogitsRows

        if not isinstance(checkpoint, (LogitsCheckpoint, LogitsRows)):
            raise InputError(f"--labels goes with a logits/probabilities file; '{checkpoint.path}' is a model, whose "
                             "labels come from the dataset (--data)")
        n = len(checkpoint.array) if isinstance(checkpoint, LogitsRows) else int(checkpoint.logits.shape[0])
        labels = load_labels(self.labels, num_rows=n, class_names=checkpoint.metadata.get("class_names"))
        if checkpoint.labels is not None and not bool((checkpoint.labels == labels).all()):
            raise InputError(f"'{checkpoint.path}' holds labels of its own that differ from --labels "
                             f"'{self.labels}'; drop one of them")
        return dataclasses.replace(checkpoint, labels=labels)

    def model(self, path: Path | str, *, why: str, keep: bool = True) -> Checkpoint:
        """The checkpoint at ``path``, refused (InputError saying ``why``) when it is a logits file."""
        from calibscope.loading.types import LogitsCheckpoint

        checkpoint = self.checkpoint(path, keep=keep)
        if isinstance(checkpoint, LogitsCheckpoint):
            raise InputError(f"'{path}' holds precomputed logits, not a model: {why}")
        self._consider_threads(path, checkpoint)
        return checkpoint

    # ------------------------------------------------------------------------------------------ outputs

    def outputs(self, checkpoint_path: Path | str | Predictive) -> tuple[Outputs, Checkpoint]:
        """(Outputs, checkpoint) for one checkpoint on the dataset (logits files need none when they carry
        their labels). A model whose outputs are in the cache is not loaded: the checkpoint returned is then a
        :class:`CachedCheckpoint` that loads the model only if something needs it. An ensemble / MC-dropout
        (:class:`~calibscope.workflows.ensemble.Predictive`) gives its predictive distribution
        (:func:`~calibscope.workflows.ensemble.predictive_outputs`), computed once per session."""
        from calibscope.workflows.ensemble import Predictive, predictive_outputs

        if isinstance(checkpoint_path, Predictive):
            key = ("predictive", checkpoint_path, str(self.data_path), self.split, self.label_column, self.limit,
                   dataclasses.astuple(self.options), self.use_cache, str(self.labels))
            memo = self._shared["outputs"]
            if key not in memo:
                memo[key] = predictive_outputs(self, checkpoint_path)
            return memo[key]
        hit = self._from_cache(checkpoint_path)
        if hit is not None:
            self._consider_threads(checkpoint_path, None)
            return hit
        checkpoint = self.checkpoint(checkpoint_path)
        self._consider_threads(checkpoint_path, checkpoint)
        return self.run(checkpoint), checkpoint

    def _consider_threads(self, path: Path | str, checkpoint: Any) -> None:
        """Tell the thread policy (``auto_threads``) how much work this model is, before it runs."""
        policy = self._shared.get("threads")
        if policy is None:
            return
        from calibscope.loading.types import LogitsCheckpoint
        from calibscope.workflows import threads

        if isinstance(checkpoint, LogitsCheckpoint):
            policy.consider(checkpoint.logits.numel() <= threads.SMALL_LOGITS)
            return
        dataset = self.dataset
        rows = 0 if dataset is None else len(dataset)
        policy.consider(threads.is_tiny(threads.checkpoint_parameters(path), threads.example_elements(dataset),
                                        rows))

    def model_key(self, path: Path | str) -> dict[str, Any]:
        """What identifies the model at ``path`` in the output cache: the file's digest (memoised by path, size
        and modification time) and how the model is built from it (arch, arch_kwargs, prefix)."""
        from calibscope.inference.cache import file_digest

        return {"file_sha256": file_digest(path), "arch": self.arch, "arch_kwargs": self.arch_kwargs,
                "prefix": self.prefix}

    def _from_cache(self, path: Path | str) -> tuple[Outputs, Checkpoint] | None:
        """(Outputs, CachedCheckpoint) when the cache holds this model's outputs on the dataset, else None."""
        from calibscope.inference import distributed
        from calibscope.loading.files import sniff

        p = Path(path)
        if not self.use_cache or self.data_path is None or distributed.current() is not None \
                or str(p) in self._shared["checkpoints"] or not p.exists():
            return None
        if p.is_file() and sniff(p) in ("npz", "npy", "text"):  # logits files are never cached
            return None
        from calibscope.inference.pipeline import cached_outputs

        found = cached_outputs(self.model_key(p), self.dataset, self.options, source=f"'{p}'")
        if found is None:
            return None
        outputs, record = found
        checkpoint = CachedCheckpoint(self, p, record["checkpoint_format"], record["checkpoint_sha256"],
                                      record["checkpoint_metadata"])
        self._shared["outputs"][self._run_key(checkpoint)] = outputs
        return outputs, checkpoint

    def _run_key(self, checkpoint) -> tuple:
        return (str(checkpoint.path), checkpoint.sha256, str(self.data_path), self.split, self.label_column,
                self.limit, dataclasses.astuple(self.options), self.use_cache, str(self.labels))

    def run(self, checkpoint: Checkpoint) -> Outputs:
        """The outputs of an already loaded checkpoint on this session's dataset (computed once)."""
        from calibscope.inference.pipeline import compute_outputs
        from calibscope.loading.types import LogitsCheckpoint

        is_logits = isinstance(checkpoint, LogitsCheckpoint)
        needs_data = not (is_logits and checkpoint.labels is not None)
        if needs_data and self.data_path is None:
            raise _no_labels(checkpoint.path) if is_logits else _no_data(checkpoint.path)
        key = self._run_key(checkpoint)
        memo = self._shared["outputs"]
        if key not in memo:
            dataset = self.dataset if (needs_data or self.data_path is not None) else None
            if is_logits and self.limit is not None:
                checkpoint = _limited(checkpoint, self.limit)
            model_key = None if is_logits or not self.use_cache else self.model_key(checkpoint.path)
            memo[key] = compute_outputs(checkpoint, dataset, self.options, use_cache=self.use_cache,
                                        model_key=model_key)
        return memo[key]

    def shard_of(self, checkpoint: Checkpoint) -> OutputShard:
        """This process's rows of an already loaded checkpoint's outputs on the session's data (all rows, from
        :meth:`run`, for one process; the rank's shard under ``torchrun``)."""
        from calibscope.inference import distributed
        from calibscope.inference.pipeline import as_shard, output_shard

        dataset = self.dataset
        if dataset is not None and dataset.labels is None:  # before running the model: the result would be unusable
            raise InputError(f"'{dataset.source}' has inputs but no labels: calibration compares predictions with "
                             "labels; store them beside the inputs (y / labels / targets)")
        if distributed.current() is None:
            return as_shard(self.run(checkpoint), checkpoint)
        return output_shard(checkpoint, self.dataset, self.options, use_cache=self.use_cache,
                            model_key=self.model_key(checkpoint.path) if self.use_cache else None)

    def output_shard(self, checkpoint_path: Path | str) -> tuple[OutputShard, Checkpoint]:
        """(OutputShard, checkpoint): this process's rows of the outputs (all rows for one process).

        A logits file whose logits are big (≥ ``$CALIBSCOPE_STREAM_MIN_BYTES``, default 256 MiB), or any size
        under ``torchrun``, is read by rows from disk when its format allows (``.npy``, ``numpy.savez``
        ``.npz``, safetensors), so memory stays bounded whatever the file's size.
        """
        from calibscope.inference import distributed
        from calibscope.inference.pipeline import as_shard, output_shard
        from calibscope.loading.checkpoint import open_logits_rows
        from calibscope.loading.types import LogitsCheckpoint, LogitsRows
        from calibscope.workflows.ensemble import Predictive

        if isinstance(checkpoint_path, Predictive):
            outputs, checkpoint = self.outputs(checkpoint_path)
            if outputs.labels is None:
                raise InputError(f"'{self.data_path}' has inputs but no labels: calibration compares predictions "
                                 "with labels; store them beside the inputs (y / labels / targets)")
            return as_shard(outputs, checkpoint), checkpoint
        hit = self._from_cache(checkpoint_path)
        if hit is not None:
            outputs, checkpoint = hit
            if outputs.labels is None:
                raise InputError(f"'{self.data_path}' has inputs but no labels: calibration compares predictions "
                                 "with labels; store them beside the inputs (y / labels / targets)")
            return as_shard(outputs, checkpoint), checkpoint
        threshold = 0 if distributed.current() is not None else _stream_min_bytes()
        checkpoint = open_logits_rows(checkpoint_path, min_bytes=threshold)
        if checkpoint is not None:
            checkpoint = self._with_labels(checkpoint)
        if checkpoint is None:
            checkpoint = self.checkpoint(checkpoint_path)
            if not isinstance(checkpoint, LogitsCheckpoint):
                return self.shard_of(checkpoint), checkpoint
        has_labels = isinstance(checkpoint, (LogitsCheckpoint, LogitsRows)) and checkpoint.labels is not None
        if not has_labels and self.data_path is None:
            raise _no_labels(checkpoint_path)
        dataset = self.dataset if (not has_labels or self.data_path is not None) else None
        if self.limit is not None:
            if isinstance(checkpoint, LogitsRows):
                checkpoint = dataclasses.replace(checkpoint, limit=self.limit)
            elif isinstance(checkpoint, LogitsCheckpoint):
                checkpoint = _limited(checkpoint, self.limit)
        return output_shard(checkpoint, dataset, self.options, use_cache=self.use_cache), checkpoint

    def source(self, checkpoint_path: Path | str) -> str:
        """What the examples are: the dataset path, or the logits file itself."""
        return str(self.data_path) if self.data_path is not None else str(checkpoint_path)

    def dataset_info(self) -> dict[str, Any] | None:
        """``{"path", "sha256", "n", "format", "split"}`` of the dataset, or None."""
        if self.data_path is None:
            return None
        d = self.dataset
        return {"path": str(self.data_path), "sha256": d.sha256, "n": len(d), "format": d.format,
                "split": d.metadata.get("split")}


class CachedCheckpoint:
    """A model checkpoint known from the output cache (format, digest, the metadata the entry recorded): what
    a hit needs, without loading the model. ``module`` loads it (once per session) when something needs it."""

    def __init__(self, session: Session, path: Path, format: str, sha256: str, metadata: dict[str, Any]):
        self._session = session
        self.path, self.format, self.sha256, self.metadata = path, format, sha256, dict(metadata)

    @property
    def module(self):
        return self._session.checkpoint(self.path).module

    def __repr__(self) -> str:
        return f"CachedCheckpoint({str(self.path)!r}, format={self.format!r})"


def _no_data(checkpoint: Path | str) -> NoDataError:
    return NoDataError(f"no dataset for '{checkpoint}': pass the data to run it on (data=...), or set "
                       "data = \"path\" under [tool.calibscope] in pyproject.toml or in calibscope.toml")


def _no_labels(checkpoint: Path | str) -> InputError:
    from calibscope.inference.pipeline import no_labels_message

    return InputError(no_labels_message(checkpoint))


def _limited(checkpoint, limit: int):
    return dataclasses.replace(checkpoint, logits=checkpoint.logits[:limit],
                               labels=None if checkpoint.labels is None else checkpoint.labels[:limit])


def _is_text(path: Path) -> bool:
    from calibscope.loading.files import sniff

    return path.exists() and sniff(path) == "text"


def _stream_min_bytes() -> int:
    text = os.environ.get(STREAM_MIN_BYTES_ENV, "").strip()
    try:
        return int(text) if text else STREAM_MIN_BYTES
    except ValueError:
        raise InputError(f"{STREAM_MIN_BYTES_ENV} must be a number of bytes, got '{text}'") from None


def project_defaults(folder: Path | str):
    """The project defaults of ``folder`` (``calibscope.toml`` or ``[tool.calibscope]`` in ``pyproject.toml``),
    or None."""
    from calibscope.loading.config import find_defaults

    return find_defaults(Path(folder))


def display_names(paths: Sequence[Path | str]) -> list[str]:
    """Short unique names for checkpoints: the file name, with parents added only where needed.

    >>> display_names(["a/model.pt2", "b/other.pt2"])
    ['model.pt2', 'other.pt2']
    >>> display_names(["a/model.pt2", "b/model.pt2"])
    ['a/model.pt2', 'b/model.pt2']
    """
    paths = [Path(p) for p in paths]
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in paths]
