"""How calibscope feeds a model: one input tensor or several named ones, a static batch, integer inputs.

* :class:`KeywordInputs` — several named tensors with one example dimension (``input_ids``, ``attention_mask``,
  ``token_type_ids`` …), sliced, pinned and moved together, and fed by keyword: ``model(**batch)``.
* :class:`ModelCall` — one model as every forward pass of calibscope calls it (the inference engine, the
  Hessian's loss): inputs converted on the device (:func:`calibscope.conventions.input_normaliser`), a
  ``torch.export`` program exported for a static batch size B fed exactly B rows (the last batch padded with
  copies of its last row, the padding dropped from the outputs), and the logits picked out of whatever the
  forward returns (:func:`calibscope.model_outputs.select_logits`).

Integer inputs other than ``uint8`` images stay integer (token ids for an ``nn.Embedding``); a model that
refuses them (a float MLP on integer features) is fed ``float32`` instead, said once — exact below 2²⁴.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch

from calibscope.conventions import input_normaliser
from calibscope.errors import InputError
from calibscope.model_outputs import classifier_width, select_logits

__all__ = ["NO_AUTOGRAD", "KeywordInputs", "ModelCall", "call_model", "no_autograd_reason", "static_batch_size"]

# Attribute of model facades that are no torch graphs (an ONNX session, an AOTInductor package): its value says
# why they give no gradients or penultimate features. Read by the feature tap and the Hessian.
NO_AUTOGRAD = "calibscope_no_autograd"


def no_autograd_reason(model: Any) -> str | None:
    """Why ``model`` cannot be differentiated or hooked (see :data:`NO_AUTOGRAD`), or None for torch modules."""
    reason = getattr(model, NO_AUTOGRAD, None)
    return reason if isinstance(reason, str) else None


class KeywordInputs:
    """Named input tensors ``{name: [N, ...]}`` sharing the example dimension N, fed as ``model(**batch)``.

    Behaves like the one input tensor where calibscope needs it: ``len``/``shape`` (those of the first tensor,
    e.g. ``input_ids`` ``[N, L]``), row slicing and indexing, ``to``, ``pin_memory``, ``record_stream``.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        if not tensors:
            raise InputError("Expected at least one named input tensor, but got none")
        rows = {name: int(t.shape[0]) if t.ndim else -1 for name, t in tensors.items()}
        if len(set(rows.values())) != 1 or -1 in rows.values():
            raise InputError(f"named inputs must share their first (example) dimension, got {rows}")
        self.tensors: dict[str, torch.Tensor] = dict(tensors)

    # -- mapping (model(**batch)) ------------------------------------------------------------------------
    def keys(self):
        return self.tensors.keys()

    def items(self):
        return self.tensors.items()

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, str):
            return self.tensors[index]
        return KeywordInputs({k: t[index] for k, t in self.tensors.items()})

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    # -- tensor-like ---------------------------------------------------------------------------------------
    @property
    def primary(self) -> torch.Tensor:
        return next(iter(self.tensors.values()))

    @property
    def shape(self) -> torch.Size:
        return self.primary.shape

    @property
    def ndim(self) -> int:
        return self.primary.ndim

    @property
    def dtype(self) -> torch.dtype:
        return self.primary.dtype

    @property
    def device(self) -> torch.device:
        return self.primary.device

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def __len__(self) -> int:
        return int(self.primary.shape[0])

    def numel(self) -> int:
        """Elements of all the named tensors together (e.g. of one example, ``inputs[0].numel()``)."""
        return sum(int(t.numel()) for t in self.tensors.values())

    def to(self, *args: Any, **kwargs: Any) -> KeywordInputs:
        return KeywordInputs({k: t.to(*args, **kwargs) for k, t in self.tensors.items()})

    def pin_memory(self) -> KeywordInputs:
        return KeywordInputs({k: t.pin_memory() for k, t in self.tensors.items()})

    def record_stream(self, stream: Any) -> None:
        for t in self.tensors.values():
            t.record_stream(stream)

    def contiguous(self, **kwargs: Any) -> KeywordInputs:
        return KeywordInputs({k: t.contiguous() for k, t in self.tensors.items()})

    def describe(self) -> str:
        return ", ".join(f"{k} {list(t.shape)} {str(t.dtype).replace('torch.', '')}" for k, t in self.items())

    def __repr__(self) -> str:
        return f"KeywordInputs({self.describe()})"


def call_model(model: Callable[..., Any], x: Any) -> Any:
    """``model(**x)`` for :class:`KeywordInputs`, ``model(x)`` otherwise."""
    if isinstance(x, KeywordInputs):
        return model(**x.tensors)
    return model(x)


def static_batch_size(model: Any) -> int | None:
    """The batch size a ``torch.export`` program was exported for, when it is static (None: dynamic/eager).

    Read from the ``val`` of the program's first input placeholder: an ``int`` first dimension is static, a
    ``SymInt`` dynamic.
    """
    if not isinstance(model, torch.fx.GraphModule):
        return None
    for node in model.graph.nodes:
        if node.op != "placeholder":
            continue
        value = node.meta.get("val")
        shape = getattr(value, "shape", None)
        if shape is None or len(shape) == 0:
            return None
        first = shape[0]
        return int(first) if type(first) is int else None
    return None


def _rows(x: Any) -> int:
    return int(x.shape[0])


def _pad_rows(x: Any, size: int) -> Any:
    """``x`` with copies of its last row appended up to ``size`` rows (real rows, so no NaN from zeros)."""
    if isinstance(x, KeywordInputs):
        return KeywordInputs({k: _pad_rows(t, size) for k, t in x.items()})
    extra = size - int(x.shape[0])
    return torch.cat([x, x[-1:].expand(extra, *x.shape[1:])]) if extra > 0 else x


def _cut(out: Any, start: int, stop: int) -> Any:
    """Rows ``[start, stop)`` of every ``[B, ...]`` tensor of a (nested) output."""
    if isinstance(out, torch.Tensor):
        return out[start:stop] if out.ndim else out
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        out = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
    if isinstance(out, Mapping):  # dicts, ModelOutputs, dataclasses: a plain dict (the logits are found the same way)
        return {k: _cut(v, start, stop) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return tuple(_cut(v, start, stop) for v in out)
    return out


def _concat(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts) if first.ndim else first
    if isinstance(first, Mapping):
        return {k: _concat([p[k] for p in parts]) for k in first}
    if isinstance(first, (tuple, list)):
        return tuple(_concat([p[i] for p in parts]) for i in range(len(first)))
    return first


class ModelCall:
    """Call ``model`` on device batches of ``inputs`` and get ``[b, K]`` logits back, whatever it returns.

    ``mean``/``std``: normalisation after uint8 → [0, 1] (see :func:`~calibscope.conventions.input_normaliser`).
    ``output``: the ``--output`` key or index. ``notify``: receives one-line notices (said once each).
    After the first call, :attr:`chosen_output` says where the logits came from (None: one tensor) and
    :attr:`static_batch` the exported program's batch size, if it is fixed.
    """

    def __init__(self, model: Any, inputs: Any, *, device: torch.device, mean: Any = None, std: Any = None,
                 output: str | int | None = None, notify: Callable[[str], None] | None = None):
        self.model = model
        self.convert = input_normaliser(inputs, mean, std, device)
        self.width = classifier_width(model)
        self.static_batch = static_batch_size(model)
        self.output = output
        self.notify = notify or (lambda message: None)
        self.chosen_output: str | int | None = None
        self.integers_as_float: bool | None = None  # decided on the first integer batch
        self._said: set[str] = set()

    def _say(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            self.notify(message)

    def prepare(self, x: Any) -> Any:
        """A device batch as the model receives it (converted, integers kept or made float)."""
        x = self.convert(x)
        if self.integers_as_float and isinstance(x, torch.Tensor) and _is_integer(x):
            x = x.float()
        return x

    def forward(self, x: Any, fn: Callable[..., Any] | None = None) -> Any:
        """The model's raw output on a prepared batch ``x`` (``fn``: the model called another way, e.g. by
        ``torch.func.functional_call``), in chunks of the static batch size when there is one."""
        fn = self.model if fn is None else fn
        b = _rows(x)
        size = self.static_batch
        if size is None or b == size:
            return self._guarded(fn, x)
        if size < 1:
            raise InputError(f"the exported program was exported for batch size {size}")
        parts = []
        for a in range(0, b, size):
            chunk = x[a:a + size]
            n = _rows(chunk)
            parts.append(_cut(self._guarded(fn, _pad_rows(chunk, size)), 0, n))
        if b % size:
            self._say(f"the exported program takes batches of exactly {size}: the last batch is padded to {size} "
                      "and the padding dropped")
        return _concat(parts)

    def _guarded(self, fn: Callable[..., Any], x: Any) -> Any:
        try:
            return self._call(fn, x)
        except AssertionError as exc:  # torch.export's input guards
            if "guard" not in str(exc).lower():
                raise
            shapes = x.describe() if isinstance(x, KeywordInputs) else f"shape {list(x.shape)}"
            raise InputError(f"the exported program refuses inputs of {shapes} ({_one_line(exc)}); re-export it "
                             "with dynamic_shapes or feed inputs of the shape it was exported for") from None

    def _call(self, fn: Callable[..., Any], x: Any) -> Any:
        if self.integers_as_float is None and isinstance(x, torch.Tensor) and _is_integer(x):
            try:  # the first integer batch: does the model take integers?
                out = call_model(fn, x)
            except (RuntimeError, TypeError, NotImplementedError) as first:
                try:
                    out = call_model(fn, x.float())
                except Exception:  # noqa: BLE001 - floats fail too: the model's own error is the one to show
                    raise first from None
                self.integers_as_float = True
                self._say("the model takes floating-point inputs: the dataset's integer inputs are fed as float32")
                return out
            self.integers_as_float = False
            return out
        if self.integers_as_float and isinstance(x, torch.Tensor):
            x = x.float()
        return call_model(fn, x)

    def logits(self, x: Any, fn: Callable[..., Any] | None = None) -> torch.Tensor:
        """``[b, K]`` logits of a prepared batch ``x``."""
        out = self.forward(x, fn)
        logits, chosen = select_logits(out, _rows(x), width=self.width, output=self.output)
        self.chosen_output = chosen
        return logits

    def __call__(self, x: Any) -> torch.Tensor:
        """Logits of a raw device batch: :meth:`prepare` then :meth:`logits`."""
        return self.logits(self.prepare(x))


def _is_integer(inputs: Any) -> bool:
    if isinstance(inputs, KeywordInputs):
        return False  # token inputs go to the model as they are
    dtype = getattr(inputs, "dtype", None)
    return dtype is not None and dtype != torch.uint8 and dtype != torch.bool and not dtype.is_floating_point \
        and not dtype.is_complex


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__
