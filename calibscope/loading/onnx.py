"""ONNX models (``model.onnx``, e.g. from ``torch.onnx.export``, tf2onnx, skl2onnx) run by ``onnxruntime``
(extra ``calibscope[onnx]``).

:class:`OnnxClassifier` is an ``nn.Module`` facade over an ``onnxruntime.InferenceSession``, so the inference
engine runs it like any model: a tensor goes to the graph's first input, :class:`~calibscope.feeding.KeywordInputs`
by name; inputs are cast to the dtype each graph input declares; the outputs come back as one tensor, or a
dict by output name (the logits are then chosen as for any model: :mod:`calibscope.model_outputs`). A graph
exported for a static batch size B is fed B rows at a time (the last chunk padded with copies of its last row,
the padding dropped). ``.to("cuda")`` moves the session to the CUDA execution provider when onnxruntime has
it (``onnxruntime-gpu``), else it stays on the CPU provider (the results are then on the CPU).

What needs a torch graph — gradients (``hessian``), penultimate features (``project``, the Mahalanobis OOD
score) — is refused in one line (:data:`NO_AUTOGRAD`). Loading an ONNX file runs no Python code from it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

from calibscope.errors import InputError
from calibscope.feeding import NO_AUTOGRAD
from calibscope.loading import files
from calibscope.loading.types import ModelCheckpoint

__all__ = ["NO_AUTOGRAD", "OnnxClassifier", "load_onnx", "looks_like_onnx"]

_REASON = ("it is an ONNX model run by onnxruntime, which gives neither gradients nor penultimate features; "
           "pass the torch checkpoint it was exported from (.pt2, safetensors, state_dict) instead")
_NUMPY_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
                "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
                "tensor(bool)": "bool"}
# ModelProto fields that follow ir_version (field 1, varint): producer_name, producer_version, domain, graph,
# opset_import … — each a length-delimited field, tag (field << 3) | 2.
_FIELD_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42}


def looks_like_onnx(p: Path) -> bool:
    """An ONNX ModelProto: ``.onnx`` or a protobuf that opens with ``ir_version`` (3…15) and a known field."""
    try:
        with p.open("rb") as fh:
            head = fh.read(3)
    except OSError:
        return False
    if len(head) < 3:
        return False
    protobuf = head[0] == 0x08 and 3 <= head[1] <= 15 and head[2] in _FIELD_TAGS
    return protobuf or (p.suffix.lower() == ".onnx" and head[0] == 0x08)


def load_onnx(p: Path) -> ModelCheckpoint:
    """``p`` as an :class:`OnnxClassifier` (CPU execution provider) in a :class:`ModelCheckpoint`."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise InputError(f"{files.display(p)} is an ONNX model; running it needs onnxruntime: "
                         "pip install 'calibscope[onnx]'")
    module = OnnxClassifier(p)
    return ModelCheckpoint(module, "onnx", p, files.file_sha256(p), {})


class OnnxClassifier(nn.Module):
    """An ONNX graph behind the ``nn.Module`` interface (see the module docstring)."""

    def __init__(self, path: Path):
        super().__init__()
        setattr(self, NO_AUTOGRAD, _REASON)
        self.path = Path(path)
        self.provider = "CPUExecutionProvider"
        self._session = self._open(self.provider)

    def _open(self, provider: str) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no provider chatter on the terminal
        try:
            session = ort.InferenceSession(str(self.path), sess_options=options, providers=[provider])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own error kinds
            raise InputError(f"{files.display(self.path)} is not an ONNX model onnxruntime {ort.__version__} can "
                             f"run ({_one_line(exc)})") from None
        self.inputs = [(i.name, _NUMPY_TYPES.get(i.type), i.shape) for i in session.get_inputs()]
        self.outputs = [o.name for o in session.get_outputs()]
        first = self.inputs[0][2] if self.inputs else None
        self.static_batch = int(first[0]) if first and isinstance(first[0], int) and first[0] > 0 else None
        return session

    def _apply(self, fn, recurse: bool = True):  # .to(device): choose the execution provider
        probe = fn(torch.zeros(()))
        import onnxruntime as ort

        wanted = ("CUDAExecutionProvider" if probe.device.type == "cuda"
                  and "CUDAExecutionProvider" in ort.get_available_providers() else "CPUExecutionProvider")
        if wanted != self.provider:
            self._session = self._open(wanted)
            self.provider = wanted
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        feeds = self._feeds(args, kwargs)
        device = next((t.device for t in feeds.values()), torch.device("cpu"))
        rows = int(next(iter(feeds.values())).shape[0])
        size = self.static_batch
        if size is None or size == rows:
            parts = [self._run(feeds)]
        else:
            parts = []
            for a in range(0, rows, size):
                chunk = {k: v[a:a + size] for k, v in feeds.items()}
                n = int(next(iter(chunk.values())).shape[0])
                padded = {k: torch.cat([v, v[-1:].expand(size - n, *v.shape[1:])]) if n < size else v
                          for k, v in chunk.items()}
                parts.append([o[:n] for o in self._run(padded)])
        outs = [torch.cat([p[i] for p in parts]) for i in range(len(self.outputs))]
        if self.provider == "CUDAExecutionProvider":
            outs = [o.to(device) for o in outs]
        return outs[0] if len(outs) == 1 else dict(zip(self.outputs, outs, strict=True))

    def _feeds(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        names = [n for n, _, _ in self.inputs]
        if args:
            if len(args) > len(names):
                raise InputError(f"{files.display(self.path)} takes {len(names)} inputs ({', '.join(names)}), "
                                 f"got {len(args)}")
            kwargs = {**dict(zip(names, args, strict=False)), **kwargs}
        unknown = [k for k in kwargs if k not in names]
        missing = [n for n in names if n not in kwargs]
        if len(names) == 1 and len(kwargs) == 1 and unknown:  # one input of another name: it is that one
            kwargs, unknown, missing = {names[0]: next(iter(kwargs.values()))}, [], []
        if missing:
            raise InputError(f"{files.display(self.path)} needs the inputs {', '.join(missing)}; the data gives "
                             f"{', '.join(kwargs) or 'none'}")
        return {n: kwargs[n] for n in names}

    def _run(self, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        import numpy as np

        arrays = {}
        for name, dtype, _ in self.inputs:
            x = feeds[name].detach().to("cpu")
            arrays[name] = np.ascontiguousarray(x.numpy().astype(dtype, copy=False) if dtype else x.numpy())
        try:
            results = self._session.run(self.outputs, arrays)
        except Exception as exc:  # noqa: BLE001 - shape/type errors of the graph
            shapes = ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in arrays.items())
            raise InputError(f"{files.display(self.path)} refused inputs {shapes} ({_one_line(exc)}); "
                             f"it takes {self._signature()}") from None
        return [torch.from_numpy(np.array(r, dtype=np.float32 if r.dtype.kind == "f" else r.dtype))
                for r in results]

    def _signature(self) -> str:
        return ", ".join(f"{n} {shape} {dtype}" for n, dtype, shape in self.inputs)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0][:240] if lines else type(exc).__name__
