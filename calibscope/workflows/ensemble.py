"""Ensembles and MC-dropout as one model: the predictive distribution of several checkpoints and/or stochastic
passes, given to every workflow in the place of a checkpoint path.

A :class:`Predictive` names the members (checkpoint paths) and the number of MC-dropout passes per member.
:meth:`Session.outputs(predictive) <calibscope.workflows.session.Session.outputs>` runs each member (and pass)
once through the inference engine and the output cache — exactly as a single checkpoint would run — and
combines them (:func:`predictive_outputs`): ``logits`` are the log of the members' mean softmax
(:func:`calibscope.diagnostics.ensemble.mean_log_probs`, float64, so ``softmax(logits)`` is the mean probability
exactly) and ``member_logits`` keeps the S members' own logits for the epistemic scores (mutual information,
disagreement). Calibration, temperature, selective classification, OOD detection and conformal prediction then
run on the predictive distribution unchanged.

Example::

    >>> from calibscope import Session
    >>> from calibscope.workflows.ensemble import Predictive
    >>> s = Session("sample_checkpoints/digits_test.npz")
    >>> ens = Predictive(("sample_checkpoints/digits_hard.safetensors", "sample_checkpoints/digits_ls.safetensors"))
    >>> outputs, ckpt = s.outputs(ens)
    >>> ens.name, tuple(outputs.member_logits.shape)
    ('ensemble(digits_hard.safetensors,digits_ls.safetensors)', (2, 1347, 10))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibscope.bounds import check_seed
from calibscope.errors import ArgumentError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.inference.outputs import Outputs
    from calibscope.loading.types import Dataset
    from calibscope.workflows.session import Session

MAX_MC_DROPOUT = 10_000  # stochastic passes per member


@dataclass(frozen=True)
class Predictive:
    """The mean predictive distribution of ``members`` (checkpoint paths; one with ``mc_dropout`` for plain
    MC-dropout), each run ``mc_dropout`` times with its dropout layers on (0: once, deterministically), the
    masks seeded by ``seed``. ``names``: display names of the members (default: their file names)."""

    members: tuple[Path, ...]
    mc_dropout: int = 0
    seed: int = 0
    names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        members = tuple(Path(p) for p in ([self.members] if isinstance(self.members, (str, Path))
                                          else self.members))
        object.__setattr__(self, "members", members)
        if not members:
            raise ArgumentError("ensemble", "an ensemble needs at least one checkpoint")
        if isinstance(self.mc_dropout, bool) or not isinstance(self.mc_dropout, int) or self.mc_dropout < 0:
            raise ArgumentError("mc_dropout", f"`mc_dropout` must be a number of passes ≥ 1 (0: off), got "
                                f"{self.mc_dropout!r}")
        if self.mc_dropout > MAX_MC_DROPOUT:
            raise ArgumentError("mc_dropout", f"`mc_dropout` must be at most {MAX_MC_DROPOUT}, got {self.mc_dropout}")
        check_seed(self.seed)
        if self.names is None:
            from calibscope.workflows.session import display_names

            object.__setattr__(self, "names", tuple(display_names(members)))
        elif len(self.names) != len(members):
            raise ArgumentError("names", f"{len(self.names)} names for {len(members)} members")

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1 or self.mc_dropout == 0

    @property
    def name(self) -> str:
        """``ensemble(a,b,c)``, ``mc-dropout(a,N)`` or ``ensemble(a,b)+mc-dropout(N)``."""
        if not self.is_ensemble:
            return f"mc-dropout({self.names[0]},{self.mc_dropout})"
        base = f"ensemble({','.join(self.names)})"
        return base if self.mc_dropout == 0 else f"{base}+mc-dropout({self.mc_dropout})"

    @property
    def samples(self) -> int:
        """S: the number of predictive distributions averaged."""
        return len(self.members) * max(1, self.mc_dropout)

    def describe(self) -> dict[str, Any]:
        """JSON-ready: members, passes, seed."""
        return {"members": [str(p) for p in self.members], "member_names": list(self.names),
                "mc_dropout": self.mc_dropout, "seed": self.seed if self.mc_dropout else None,
                "samples": self.samples, "combination": "logits = log((1/S) sum_s softmax(z_s))"}

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class PredictiveCheckpoint:
    """What an ensemble / MC-dropout "checkpoint" is to the workflows: the spec, its members' loaded (or cached)
    checkpoints, a combined ``format`` and ``sha256`` (of the members' digests), ``metadata`` (the first
    member's class names and count)."""

    path: Predictive
    members: tuple[Any, ...]
    format: str
    sha256: str
    metadata: dict[str, Any]


def as_model_ref(checkpoint: Path | str | Predictive) -> Path | Predictive:
    """A :class:`Predictive` as it is, anything else as a :class:`~pathlib.Path`."""
    return checkpoint if isinstance(checkpoint, Predictive) else Path(checkpoint)


def predictive_outputs(session: Session, spec: Predictive, *,
                       dataset: Dataset | None = None) -> tuple[Outputs, PredictiveCheckpoint]:
    """(combined Outputs, :class:`PredictiveCheckpoint`) of ``spec`` on the session's data (or on ``dataset``,
    e.g. an OOD set with its labels dropped): each member and pass through the engine and the cache, then the
    members' mean softmax. Members must agree on the number of examples, classes and labels."""
    import torch

    from calibscope.diagnostics.ensemble import mean_log_probs, member_log_probs
    from calibscope.inference import distributed
    from calibscope.inference.outputs import Outputs
    from calibscope.loading.types import LogitsCheckpoint

    if distributed.current() is not None:
        raise InputError("--ensemble and --mc-dropout run in one process, not under torchrun")
    if session.capture_features:  # the members' features live in different spaces: none are combined
        session = session.with_options(capture_features=False)
    draws: list[Outputs] = []
    checkpoints = []
    for path in spec.members:
        if spec.mc_dropout:
            from calibscope.inference.mc_dropout import check_mc_dropout_format

            ckpt = session.checkpoint(path)
            check_mc_dropout_format(ckpt.format, path)
            for i in range(spec.mc_dropout):
                passed = session.with_options(dropout_pass=i, dropout_seed=spec.seed)
                draws.append(_run(passed, ckpt, dataset))
        elif dataset is None:
            out, ckpt = session.outputs(path)
            draws.append(out)
        else:
            ckpt = session.checkpoint(path)
            if isinstance(ckpt, LogitsCheckpoint):
                raise InputError(f"'{path}' holds precomputed logits: {spec.name} must be run on a second data set "
                                 "here, so its members must be models")
            draws.append(_run(session, ckpt, dataset))
        checkpoints.append(ckpt)
    _check_agreement(spec, draws)
    stacked = torch.stack([d.logits.float() for d in draws])  # [S, N, K]
    logits = mean_log_probs(member_log_probs(stacked))
    first = draws[0]
    formats = sorted({c.format for c in checkpoints})
    meta = {k: v for k, v in first.meta.items() if k not in ("seconds", "examples_per_second", "mc_dropout")}
    meta.update({"checkpoint_format": "+".join(formats), "predictive": spec.describe(),
                 "seconds": sum(float(d.meta.get("seconds") or 0.0) for d in draws),
                 "member_cache": [d.meta.get("cache") for d in draws]})
    caches = set(meta["member_cache"])
    meta["cache"] = caches.pop() if len(caches) == 1 else "partial"  # "hit" only when every member was cached
    if spec.mc_dropout:
        meta["dropout_layers"] = first.meta.get("mc_dropout", {}).get("dropout_layers")
    import hashlib

    digest = hashlib.sha256(repr((spec.describe(), [c.sha256 for c in checkpoints])).encode()).hexdigest()
    meta["checkpoint_sha256"] = digest
    ckpt_meta = {k: v for k, v in (checkpoints[0].metadata or {}).items() if k in ("class_names", "num_classes")}
    combined = Outputs(logits=logits, labels=first.labels, meta=meta, member_logits=stacked)
    kind = "ensemble" if spec.is_ensemble else "mc-dropout"
    return combined, PredictiveCheckpoint(spec, tuple(checkpoints), f"{kind}({'+'.join(formats)})", digest,
                                          ckpt_meta)


def _run(session: Session, checkpoint: Any, dataset: Dataset | None) -> Outputs:
    if dataset is None:
        return session.run(checkpoint)
    from calibscope.inference.pipeline import compute_outputs

    return compute_outputs(checkpoint, dataset, session.options, use_cache=session.use_cache,
                           model_key=session.model_key(checkpoint.path) if session.use_cache else None)


def _check_agreement(spec: Predictive, draws: list[Outputs]) -> None:
    import torch

    per_member = max(1, spec.mc_dropout)
    first, name0 = draws[0], spec.names[0]
    for j, d in enumerate(draws[1:], start=1):
        name = spec.names[j // per_member]
        if d.num_classes != first.num_classes:
            raise InputError(f"the members of {spec.name} disagree: '{name0}' has {first.num_classes} classes but "
                             f"'{name}' has {d.num_classes}")
        if d.num_examples != first.num_examples:
            raise InputError(f"the members of {spec.name} disagree: '{name0}' gives {first.num_examples} examples "
                             f"but '{name}' gives {d.num_examples}")
        if (d.labels is None) != (first.labels is None) or (
                d.labels is not None and not torch.equal(d.labels, first.labels)):
            raise InputError(f"the members of {spec.name} disagree: '{name0}' and '{name}' come with different "
                             "labels (were they computed on the same data, in the same order?)")


def with_labels_dropped(dataset: Dataset) -> Dataset:
    """``dataset`` without labels (OOD labels name other classes)."""
    return dataclasses.replace(dataset, labels=None)


def require_model_members(checkpoint: Any, why: str) -> None:
    """InputError when an ensemble holds a logits file but must run on a second data set (``why``)."""
    from calibscope.loading.types import LogitsCheckpoint

    if not isinstance(checkpoint, PredictiveCheckpoint):
        return
    for member, path in zip(checkpoint.members, checkpoint.path.members, strict=True):
        if isinstance(member, LogitsCheckpoint):
            raise InputError(f"'{path}' holds precomputed logits, but {checkpoint.path.name} must run on {why}: "
                             "its members must be models")


# The scores defined on a predictive distribution: its "logits" are log-probabilities (max-logit = log msp).
PREDICTIVE_SCORES = ("msp", "max-logit", "mutual-information", "disagreement")


def check_predictive_scores(names: tuple[str, ...], model: Any) -> None:
    """Refuse, for an ensemble / MC-dropout, the scores it does not define: energy (its logits are log p̄, so
    ``logsumexp(z) = 0`` for every input and the score would rank rounding noise) and every score that reads
    one network's penultimate features or the network itself (mahalanobis and the post-hoc detectors)."""
    if not isinstance(model, Predictive):
        return
    bad = [n for n in names if n not in PREDICTIVE_SCORES]
    if "energy" in bad:
        raise ArgumentError("score", f"the energy score is undefined for {model.name}: its logits are the log of the "
                            "mean probability, whose logsumexp is 0 for every input; use msp or the epistemic "
                            "scores (mutual-information, disagreement)")
    if bad:
        raise ArgumentError("score", f"the {', '.join(bad)} score needs one network's features or the network "
                            f"itself, and {model.name} averages several; use {', '.join(PREDICTIVE_SCORES)}")
