"""Loss-surface slices (Li et al. 2018) around one model and the loss along the straight line between two
(Goodfellow et al. 2015), as ``calibscope landscape A [B]`` computes them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from calibscope.bounds import check_seed
from calibscope.diagnostics.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EXAMPLES,
    DEFAULT_LINE_POINTS,
    DEFAULT_SPAN,
    DEFAULT_SURFACE_POINTS,
)
from calibscope.errors import ArgumentError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.results import LandscapeResult
    from calibscope.workflows.session import Session

# a finer grid than this is hours of CPU on a real model; ask for it in pieces
MAX_POINTS = 401

_WHY = ("the loss landscape moves the model's weights (.pt2, TorchScript, state_dict + --arch or safetensors; "
        "not a logits file or ONNX)")


@dataclass(frozen=True)
class LandscapeSettings:
    """``dimensions`` 1 or 2 (random filter-normalised directions around A); ``span``: α, β ∈ [−span, span];
    ``steps``: grid points per axis; ``line_steps``: points of t ∈ [0, 1] on the line from A to B; the loss is
    the mean cross-entropy over a seeded subset of ``examples``; ``seed`` draws the directions and the subset;
    ``batch_size`` of the loss evaluations."""

    dimensions: int = 1
    span: float = DEFAULT_SPAN
    steps: int = DEFAULT_SURFACE_POINTS
    line_steps: int = DEFAULT_LINE_POINTS
    examples: int = DEFAULT_EXAMPLES
    seed: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE

    def __post_init__(self) -> None:
        if self.dimensions not in (1, 2):
            raise ArgumentError("dimensions", f"`dimensions` must be 1 or 2, got {self.dimensions}")
        for name, least in (("steps", 1), ("line_steps", 2), ("examples", 1), ("batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ArgumentError(name, f"`{name}` must be an integer of at least {least}, got {value!r}")
        for name in ("steps", "line_steps"):
            if getattr(self, name) > MAX_POINTS:
                raise ArgumentError(name, f"`{name}` must be at most {MAX_POINTS}, got {getattr(self, name)}")
        if isinstance(self.span, bool) or not isinstance(self.span, (int, float)) \
                or not 0 < self.span < float("inf"):
            raise ArgumentError("span", f"`span` must be a finite number > 0, got {self.span!r}")
        check_seed(self.seed)


def _weights(session: Session, path: Path):
    from calibscope.feeding import no_autograd_reason

    checkpoint = session.model(path, why=_WHY)
    reason = no_autograd_reason(checkpoint.module)
    if reason is not None:  # ONNX, AOTInductor packages
        raise InputError(f"'{path}': the landscape moves a torch model's weights, but {reason}")
    if not any(p.is_floating_point() for p in checkpoint.module.parameters()):
        raise InputError(f"'{path}' exposes no floating-point parameters to move; {_WHY}")
    return checkpoint


def run_landscape(session: Session, checkpoint: Path | str, other: Path | str | None = None,
                  settings: LandscapeSettings | None = None, *, names: tuple[str, str | None] | None = None,
                  on_progress: Callable[[str, int, int], None] | None = None) -> LandscapeResult:
    """The loss surface around ``checkpoint`` (A) on the session's (training) data and, with ``other`` (B), the
    loss along (1 − t) w_A + t w_B. ``on_progress(stage, done, total)`` after each loss evaluation (stage
    ``"surface"`` or ``"line"``). B must have A's architecture and input normalisation."""
    from calibscope.diagnostics.landscape import loss_along_line, loss_surface
    from calibscope.inference.device import resolve_device
    from calibscope.results import LandscapeResult
    from calibscope.workflows.session import display_names

    s = settings or LandscapeSettings()
    path_a = Path(checkpoint)
    path_b = Path(other) if other is not None else None
    if names is None:
        shown = display_names([path_a] + ([path_b] if path_b is not None else []))
        names = (shown[0], shown[1] if path_b is not None else None)
    dataset = session.require_dataset("the landscape is that of the loss on the (training) data")
    if dataset.labels is None:
        raise InputError(f"'{session.data_path}' has no labels: the loss needs them")
    target = resolve_device(session.device)
    a = _weights(session, path_a)
    normalised = session.options_for(a)
    b = _weights(session, path_b) if path_b is not None else None
    if b is not None:
        other_norm = session.options_for(b)
        if (other_norm.mean, other_norm.std) != (normalised.mean, normalised.std):
            raise InputError(f"'{path_a}' and '{path_b}' normalise their inputs differently (mean/std "
                             f"{normalised.mean}/{normalised.std} vs {other_norm.mean}/{other_norm.std}): the "
                             "line between them needs one model family")

    def progress(stage: str) -> Callable[[int, int], None] | None:
        return None if on_progress is None else (lambda done, total: on_progress(stage, done, total))

    common = dict(examples=s.examples, seed=s.seed, batch_size=s.batch_size, mean=normalised.mean,
                  std=normalised.std)
    model_a = a.module.to(target)
    line = None
    if b is not None:  # checked first: a mismatch fails before the long surface computation
        model_b = b.module.to(target)
        line = loss_along_line(model_a, model_b, dataset.inputs, dataset.labels, points=s.line_steps,
                               on_progress=progress("line"), **common)
    surface = loss_surface(model_a, dataset.inputs, dataset.labels, dimensions=s.dimensions, span=s.span,
                           points=s.steps, on_progress=progress("surface"), **common)
    meta = {"checkpoint_sha256": a.sha256, "dataset": str(dataset.source), "dataset_sha256": dataset.sha256,
            "normalisation": {"mean": normalised.mean, "std": normalised.std}}
    if b is not None:
        meta["checkpoint_b_sha256"] = b.sha256
    return LandscapeResult(names[0], path_a, a.format, surface, line, names[1], path_b, meta)
