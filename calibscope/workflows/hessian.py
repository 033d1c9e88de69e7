"""Top Hessian eigenvalues of the training loss (Foret et al. 2021) for one or more models, as ``calibscope
hessian`` and the report's Hessian section compute them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from calibscope.bounds import check_seed
from calibscope.diagnostics.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EXAMPLES,
    DEFAULT_MAX_HVP,
    DEFAULT_TOL,
    DEFAULT_TOP,
    DEFAULT_TRACE_SAMPLES,
)
from calibscope.errors import ArgumentError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.results import HessianResult
    from calibscope.workflows.session import Session

BN_MODES = ("eval", "train")


@dataclass(frozen=True)
class HessianSettings:
    """``top`` eigenvalues λ1…λk; the loss is averaged over a seeded subset of ``examples``; Lanczos stops
    when every wanted eigenvalue has residual ≤ ``tol``·|λ| or after ``max_hvp`` products; ``repeats``
    disjoint subsets; ``params``: all, last or a regular expression over parameter names; ``bn``: BatchNorm
    statistics (eval or train); ``trace_samples`` Hutchinson probes; ``per_layer`` blocks; ``density`` by
    stochastic Lanczos quadrature; ``batch_size`` of the Hessian-vector products; ``trace_method``:
    ``hutchinson``, ``hutchpp`` (Meyer et al. 2021) or ``both`` at the same budget of ``trace_hvps`` products
    (:func:`~calibscope.diagnostics.hessian.trace_budget`)."""

    top: int = DEFAULT_TOP
    examples: int = DEFAULT_EXAMPLES
    tol: float = DEFAULT_TOL
    max_hvp: int = DEFAULT_MAX_HVP
    seed: int = 0
    repeats: int = 1
    params: str = "all"
    bn: str = "eval"
    trace_samples: int = DEFAULT_TRACE_SAMPLES
    per_layer: bool = False
    density: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    trace_method: str = "hutchinson"
    trace_hvps: int | None = None

    def __post_init__(self) -> None:
        if self.bn not in BN_MODES:
            raise ArgumentError("bn", f"`bn` must be 'eval' or 'train', got '{self.bn}'")
        for name, least in (("top", 1), ("examples", 1), ("repeats", 1), ("seed", 0), ("trace_samples", 0)):
            if getattr(self, name) < least:
                raise ArgumentError(name, f"`{name}` must be at least {least}, got {getattr(self, name)}")
        check_seed(self.seed)
        from calibscope.diagnostics.hessian import trace_budget

        try:
            trace_budget(self.trace_method, self.trace_samples, self.trace_hvps)
        except InputError as exc:
            raise ArgumentError("trace_hvps" if self.trace_hvps is not None else "trace_method", str(exc)) from None


def run_hessian(session: Session, checkpoints: Sequence[Path | str], settings: HessianSettings | None = None, *,
                names: Sequence[str] | None = None) -> list[HessianResult]:
    """λ1…λk, λ1/λk and the Hutchinson trace of the mean cross-entropy on the session's (training) data, for
    each model. Under ``torchrun`` each rank takes a part of the subset and the products are summed."""
    from calibscope.diagnostics import hessian as hs
    from calibscope.inference import distributed
    from calibscope.inference.device import resolve_device
    from calibscope.results import HessianResult
    from calibscope.workflows.session import display_names

    s = settings or HessianSettings()
    paths = [Path(p) for p in checkpoints]
    names = list(names) if names is not None else display_names(paths)
    dataset = session.require_dataset("the Hessian is that of the loss on the (training) data")
    target = resolve_device(session.device)
    options = dict(top=s.top, tol=s.tol, examples=s.examples, seed=s.seed, params=s.params, bn=s.bn,
                   batch_size=s.batch_size, max_hvp=s.max_hvp, trace_samples=s.trace_samples,
                   per_layer=s.per_layer, density=s.density, trace_method=s.trace_method,
                   trace_hvps=s.trace_hvps)
    group = distributed.current()
    if group is not None:  # under torchrun: each rank a part of the subset, products summed over ranks
        options.update(part=(group.rank, group.world_size), reduce=group.all_reduce_sum)
    results = []
    for name, path in zip(names, paths, strict=True):
        checkpoint = session.model(path, why="the Hessian needs the parameters (.pt2, TorchScript, state_dict or "
                                              "safetensors)")
        normalised = session.options_for(checkpoint)
        model = checkpoint.module.to(target)
        run = dict(options, mean=normalised.mean, std=normalised.std, output=session.output)
        if s.repeats > 1:
            rep = hs.hessian_repeats(model, dataset.inputs, dataset.labels, repeats=s.repeats, **run)
            spectrum = rep.spectra[0]
        else:
            rep, spectrum = None, hs.top_hessian_eigenvalues(model, dataset.inputs, dataset.labels, **run)
        meta = {"checkpoint_sha256": checkpoint.sha256, "dataset": str(dataset.source),
                "dataset_sha256": dataset.sha256,
                "normalisation": {"mean": normalised.mean, "std": normalised.std}}
        results.append(HessianResult(name, path, checkpoint.format, spectrum, rep, meta))
    return results
