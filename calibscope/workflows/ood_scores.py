"""The post-hoc OOD detectors that need more than logits — ODIN, KNN, ViM, ReAct, ASH, GradNorm, Gram — computed
for ``calibscope ood`` and ``calibscope selective`` on the same engine (the math in
:mod:`calibscope.diagnostics.ood_detectors` and :mod:`calibscope.diagnostics.gram`).

:class:`DetectorScorer` fits what a detector needs once (on ``train``, and for Gram's normalisers on ``val``)
and scores any set of inputs the session can run (the test set, the OOD set). What each score needs is
:data:`calibscope.diagnostics.ood.SCORE_NEEDS`; :func:`check_possible` refuses, before any model runs, a
detector that the inputs cannot feed (a logits file has no features; ONNX/AOTInductor have no gradients;
only eager models have hookable layers).

Adding a score: its name and needs in :mod:`calibscope.diagnostics.ood` (``SCORES``, ``SCORE_NEEDS``,
``_FORMULAS``, ``_REFERENCES``) and a branch in :meth:`DetectorScorer.score`; ``ood`` and ``selective`` then
list, table, plot and write it like the others.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibscope.diagnostics.defaults import (
    DEFAULT_ASH_PERCENTILE,
    DEFAULT_ASH_VARIANT,
    DEFAULT_GRADNORM_TEMPERATURE,
    DEFAULT_GRAM_POLES,
    DEFAULT_KNN_K,
    DEFAULT_ODIN_EPSILON,
    DEFAULT_ODIN_TEMPERATURE,
    DEFAULT_REACT_PERCENTILE,
)
from calibscope.errors import ArgumentError, InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from calibscope.inference.outputs import Outputs
    from calibscope.loading.types import Checkpoint, Dataset
    from calibscope.workflows.session import Session

__all__ = ["DetectorScorer", "DetectorSettings", "check_possible", "needs"]

_NO_GRADIENTS = ("onnx", "aoti")
_NOT_EAGER = {"onnx": "ONNX", "aoti": "AOTInductor", "export": ".pt2 (torch.export)", "torchscript": "TorchScript"}


@dataclass(frozen=True)
class DetectorSettings:
    """Hyper-parameters of the post-hoc detectors, with the papers' defaults (``docs/ood.md``).

    ``knn_k``: k of KNN (Sun et al. 2022: 50); ``vim_dim``: ViM's principal dimension (None: the paper's rule,
    D/2 below 768 features); ``react_percentile``: ReAct's clip quantile of the training activations (0.9);
    ``ash_variant``/``ash_percentile``: ash-p/ash-b/ash-s and the share of activations pruned (0.65);
    ``odin_temperature``/``odin_epsilon``: ODIN's T (1000) and ε (0.0014, on the [0, 1] input scale);
    ``gradnorm_temperature``: GradNorm's T (1); ``gram_poles``: Gram orders p = 1..P (10);
    ``gram_layers``: module names whose outputs the Gram detector reads (None: every activation module);
    ``seed``: Gram's held-out split when no ``val`` is given.
    """

    knn_k: int = DEFAULT_KNN_K
    vim_dim: int | None = None
    react_percentile: float = DEFAULT_REACT_PERCENTILE
    ash_variant: str = DEFAULT_ASH_VARIANT
    ash_percentile: float = DEFAULT_ASH_PERCENTILE
    odin_temperature: float = DEFAULT_ODIN_TEMPERATURE
    odin_epsilon: float = DEFAULT_ODIN_EPSILON
    gradnorm_temperature: float = DEFAULT_GRADNORM_TEMPERATURE
    gram_poles: int = DEFAULT_GRAM_POLES
    gram_layers: tuple[str, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        def positive_int(name: str, value: Any, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ArgumentError(name, f"`{name}` must be a positive integer, got {value!r}")

        def number(name: str, value: Any, low: float, high: float, closed_high: bool = False) -> None:
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            if not ok or not (low <= value < high or (closed_high and value == high)):
                raise ArgumentError(name, f"`{name}` must be a number in [{low:g}, {high:g}), got {value!r}")

        positive_int("knn_k", self.knn_k)
        positive_int("vim_dim", self.vim_dim, allow_none=True)
        positive_int("gram_poles", self.gram_poles)
        number("react_percentile", self.react_percentile, 0.0, 1.0)
        number("ash_percentile", self.ash_percentile, 0.0, 1.0)
        number("odin_epsilon", self.odin_epsilon, 0.0, math.inf)
        for name in ("odin_temperature", "gradnorm_temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value > 0):
                raise ArgumentError(name, f"`{name}` must be a positive number, got {value!r}")
        if self.ash_variant not in ("ash-p", "ash-b", "ash-s"):
            raise ArgumentError("ash_variant", f"`ash_variant` must be ash-p, ash-b or ash-s, got "
                                f"{self.ash_variant!r}")
        if self.gram_layers is not None:
            layers = tuple(str(x).strip() for x in self.gram_layers if str(x).strip())
            if not layers:
                raise ArgumentError("gram_layers", "`gram_layers` names no layer")
            object.__setattr__(self, "gram_layers", layers)

    def parameters(self, score: str) -> dict[str, Any]:
        """The hyper-parameters of one detector (recorded in its JSON definition)."""
        d = asdict(self)
        keys = {"knn": ("knn_k",), "vim": ("vim_dim",), "react": ("react_percentile",),
                "ash": ("ash_variant", "ash_percentile"), "odin": ("odin_temperature", "odin_epsilon"),
                "gradnorm": ("gradnorm_temperature",), "gram": ("gram_poles", "gram_layers", "seed")}
        return {k: d[k] for k in keys.get(score, ())}


def needs(names: tuple[str, ...]) -> frozenset[str]:
    """The union of what the scores need (``features``, ``train``, ``model``)."""
    from calibscope.diagnostics.ood import SCORE_NEEDS

    out: set[str] = set()
    for name in names:
        out |= SCORE_NEEDS[name]
    return frozenset(out)


def check_possible(names: tuple[str, ...], checkpoint: Checkpoint, *, train: Path | str | None) -> None:
    """Refuse (one line, exit 2 on the command line) a detector these inputs cannot feed."""
    from calibscope.diagnostics.ood import SCORE_NEEDS
    from calibscope.loading.types import LogitsCheckpoint
    from calibscope.workflows.ensemble import PredictiveCheckpoint

    if names and isinstance(checkpoint, PredictiveCheckpoint):
        raise ArgumentError("score", f"the post-hoc detectors ({', '.join(names)}) read one model's features, "
                            "inputs or layers, not an ensemble's or MC-dropout's predictive distribution; run them "
                            "on one checkpoint, or use msp and the epistemic scores here")
    for name in names:
        need = SCORE_NEEDS[name]
        if need & {"features", "model"} and isinstance(checkpoint, LogitsCheckpoint):
            what = "penultimate features and the final layer" if "features" in need else "the model itself"
            raise InputError(f"the {name!r} detector needs {what}, and '{checkpoint.path}' is a logits file; "
                             "pass the model (.pt2, TorchScript, safetensors or state_dict + arch)")
        if name == "odin" and checkpoint.format in _NO_GRADIENTS:
            raise InputError(f"the 'odin' detector needs input gradients, and a {checkpoint.format} model has none "
                             "here; pass a .pt2, TorchScript, safetensors or state_dict checkpoint")
        if name == "gram" and checkpoint.format in _NOT_EAGER:
            raise InputError(f"the 'gram' detector hooks intermediate layers, which a {_NOT_EAGER[checkpoint.format]} "
                             "model does not expose; pass the weights as safetensors or state_dict + arch")
    for name in names:
        if "train" in SCORE_NEEDS[name] and train is None:
            raise ArgumentError("train", f"the {name!r} detector is fitted on in-distribution data: pass `train` "
                                "(labelled training data)")


def _float_inputs(dataset: Dataset) -> torch.Tensor:
    import torch

    x = dataset.inputs
    if not isinstance(x, torch.Tensor) or not (x.dtype == torch.uint8 or x.is_floating_point()):
        raise InputError(f"ODIN and Gram perturb or read image-like inputs; '{dataset.source}' holds "
                         f"{getattr(x, 'dtype', type(x).__name__)} inputs")
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


class DetectorScorer:
    """Fits and scores the detectors of ``names`` for one checkpoint (``session`` runs it; ``train``/``val``:
    in-distribution fit data). Fits are made on first use and shared by every set scored."""

    def __init__(self, session: Session, checkpoint: Checkpoint, names: tuple[str, ...],
                 settings: DetectorSettings, *, train: Path | str | None, val: Path | str | None = None):
        check_possible(names, checkpoint, train=train)
        self.session, self.checkpoint, self.names, self.settings = session, checkpoint, names, settings
        self.train, self.val = (None if train is None else Path(train)), (None if val is None else Path(val))
        self._fits: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------- shared pieces

    @property
    def _device(self):
        from calibscope.inference.device import resolve_device

        return resolve_device(self.session.device)

    def _normalisation(self):
        o = self.session.options_for(self.checkpoint)
        return o.mean, o.std

    def _train_outputs(self) -> Outputs:
        if "train_outputs" not in self._fits:
            train = self.session.for_data(self.train, prefer_split="train", capture_features=True)
            if train.dataset.labels is None:
                raise ArgumentError("train", f"`train` '{self.train}' holds no labels; the detectors' fits need "
                                    "them")
            outputs = train.run(self.checkpoint)
            if outputs.features is None or outputs.weight is None:
                raise ArgumentError("layer", "no penultimate features were captured for `train`; name the layer "
                                    "with `layer`")
            self._fits["train_outputs"] = outputs
            self.meta["train"] = {**outputs.meta, "role": "train", "n": outputs.num_examples}
        return self._fits["train_outputs"]

    def _gram_stats(self, dataset: Dataset) -> tuple[torch.Tensor, list[torch.Tensor]]:
        from calibscope.diagnostics.gram import default_poles, gram_statistics
        from calibscope.inference.layers import default_feature_layers, layer_statistics

        model = self.checkpoint.module
        layers = self.settings.gram_layers or default_feature_layers(model)
        self.meta.setdefault("gram_layers", list(layers))
        poles = default_poles(self.settings.gram_poles)
        mean, std = self._normalisation()
        return layer_statistics(model, _float_inputs(dataset), layers=layers,
                                reduce=lambda m: gram_statistics(m, poles), mean=mean, std=std,
                                batch_size=self.session.batch_size or 256, device=self._device)

    def _fit(self, name: str) -> Any:
        if name in self._fits:
            return self._fits[name]
        from calibscope.diagnostics import ood_detectors as od

        s = self.settings
        if name == "gram":
            import torch

            from calibscope.diagnostics.gram import default_poles, fit_gram

            train = self.session.for_data(self.train, prefer_split="train")
            if train.dataset.labels is None:
                raise ArgumentError("train", f"`train` '{self.train}' holds no labels; the Gram bounds are per class")
            logits, stats = self._gram_stats(train.dataset)
            val_stats = val_labels = None
            if self.val is not None:
                val = self.session.for_data(self.val, prefer_split="val")
                val_logits, val_stats = self._gram_stats(val.dataset)
                val_labels = val.dataset.labels if val.dataset.labels is not None else val_logits.argmax(dim=1)
            fit = fit_gram(stats, train.dataset.labels, num_classes=int(logits.shape[1]),
                           poles=default_poles(s.gram_poles), val_stats=val_stats, val_labels=val_labels,
                           generator=torch.Generator().manual_seed(s.seed))
            self.meta["gram"] = {**fit.summary(), "layers": self.meta.get("gram_layers"),
                                 "val": None if self.val is None else str(self.val)}
        else:
            t = self._train_outputs()
            if name == "knn":
                fit = t.features
            elif name == "vim":
                fit = od.fit_vim(t.features, t.weight, t.bias, dim=s.vim_dim)
                self.meta["vim"] = {"dim": fit.dim, "alpha": fit.alpha}
            elif name == "react":
                fit = od.react_threshold(t.features, percentile=s.react_percentile)
                self.meta["react"] = {"threshold": fit}
            else:  # pragma: no cover - every fitted score is above
                raise KeyError(name)
        self._fits[name] = fit
        return fit

    # ------------------------------------------------------------------------------------- scoring

    def score(self, name: str, outputs: Outputs, dataset: Dataset | None, *, role: str) -> torch.Tensor:
        """In-distribution scores (higher = more in-distribution) of ``name`` for the inputs behind ``outputs``
        (``dataset``: those inputs, for ODIN and Gram; None when the outputs came from a logits file)."""
        from calibscope.diagnostics import ood_detectors as od

        s = self.settings
        if name in ("odin", "gram") and dataset is None:
            raise ArgumentError("ood_data", f"the {name!r} detector runs the model on the inputs, and the {role} "
                                "set is a logits file; pass the dataset itself")
        if name in ("knn", "vim", "react", "ash", "gradnorm") and (outputs.features is None or outputs.weight is None):
            raise ArgumentError("ood_data", f"the {name!r} detector needs penultimate features of the {role} set, "
                                "and it is a logits file; pass the dataset itself")
        if name == "knn":
            bank = self._fit("knn")
            if s.knn_k > bank.shape[0]:
                raise ArgumentError("knn_k", f"`knn_k` {s.knn_k} is larger than the {bank.shape[0]} training "
                                    "examples")
            return od.knn_score(outputs.features, bank, k=s.knn_k)
        if name == "vim":
            return od.vim_score(outputs.features, self._fit("vim"), outputs.weight, outputs.bias)
        if name == "react":
            return od.react_score(outputs.features, outputs.weight, outputs.bias, threshold=self._fit("react"))
        if name == "ash":
            return od.ash_score(outputs.features, outputs.weight, outputs.bias, variant=s.ash_variant,
                                percentile=s.ash_percentile)
        if name == "gradnorm":
            return od.gradnorm_score(outputs.features, outputs.weight, outputs.bias,
                                     temperature=s.gradnorm_temperature)
        if name == "odin":
            return self._odin(dataset)
        if name == "gram":
            from calibscope.diagnostics.gram import gram_score

            fit = self._fit("gram")
            logits, stats = self._gram_stats(dataset)
            return gram_score(stats, logits, fit)
        raise InputError(f"no detector named {name!r}")  # pragma: no cover

    def _odin(self, dataset: Dataset) -> torch.Tensor:
        from calibscope.diagnostics.ood import max_softmax_score
        from calibscope.diagnostics.ood_detectors import odin_inputs
        from calibscope.inference.layers import layer_statistics
        from calibscope.inference.odin import odin_gradient_sign

        s = self.settings
        model = self.checkpoint.module
        mean, std = self._normalisation()
        raw = _float_inputs(dataset)
        batch = self.session.batch_size or 256
        try:
            sign = odin_gradient_sign(model, raw, temperature=s.odin_temperature, mean=mean, std=std,
                                      batch_size=batch, device=self._device)
        except RuntimeError as exc:
            raise InputError(f"the 'odin' detector needs input gradients, and this {self.checkpoint.format} model "
                             f"gave none ({str(exc).splitlines()[0]})") from None
        perturbed = odin_inputs(raw, sign, epsilon=s.odin_epsilon)  # ε on the [0, 1] input scale
        logits, _ = layer_statistics(model, perturbed, layers=(), reduce=lambda m: m, mean=mean, std=std,
                                     batch_size=batch, device=self._device)
        return max_softmax_score(logits, temperature=s.odin_temperature)

    def definition(self, name: str) -> dict[str, Any]:
        """Formula, paper and hyper-parameters of ``name`` (and what its fit found)."""
        from calibscope.diagnostics.ood import _FORMULAS, _REFERENCES

        d: dict[str, Any] = {"formula": _FORMULAS[name], "reference": _REFERENCES[name],
                             **self.settings.parameters(name)}
        if name in self.meta:
            d["fit"] = self.meta[name]
        if name in ("knn", "vim", "react", "gram"):
            d["fit_data"] = str(self.train)
        if name == "gram":
            d["normalised_on"] = str(self.val) if self.val is not None else "10 % of each class of the fit data"
        if name == "odin":
            d["epsilon_scale"] = "inputs in [0, 1] (before mean/std normalisation)"
        return d
