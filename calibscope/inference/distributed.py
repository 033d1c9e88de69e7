"""The same command on N processes under ``torchrun``: ranks, shards, gathers, sums, and failures.

PyTorch's own engine only. ``torchrun`` starts the processes and sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``
and ``MASTER_ADDR``/``MASTER_PORT``; :func:`init_from_environment` joins ``torch.distributed``'s default
process group — NCCL for CUDA tensors and gloo for CPU tensors when CUDA is present, gloo alone otherwise —
and pins rank r to ``cuda:LOCAL_RANK``. With ``WORLD_SIZE`` unset or 1 nothing happens: one process is the
plain code path, and ``torchrun --nproc_per_node=1`` gives exactly the plain command's numbers.

What travels between ranks:

* nothing to choose the shards: rank r takes rows ``contiguous_shard(n, r, W)`` — contiguous, exactly n rows
  overall, no padding duplicates (unlike ``DistributedSampler``'s default);
* :meth:`Distributed.all_gather_rows`: blocks of rows of different lengths, concatenated in rank order on
  every rank (one ``all_gather`` of the sizes, one of the blocks padded to the longest, then trimmed) — the
  logits and features of the shards, so every rank holds what one process would have computed;
* :meth:`Distributed.gather_rows`: the same to one rank only;
* :meth:`Distributed.all_reduce_sum`: sufficient statistics (calibration bins, Newton sums, Hessian-vector
  products), summed in their own dtype.

Failures. Every collective first exchanges one status flag (an ``all_reduce(MAX)`` of one integer over gloo).
A rank whose own work raised does not go on to the next collective: the command's error handler calls
:meth:`Distributed.settle` with its exit code and message, which sends the flag set plus the message. The
other ranks, at whatever collective they reached, receive that message and raise :class:`RankFailed`; so every
rank ends with the failing rank's exit code, rank 0 prints its message, and none waits for a partner that will
never come. A rank that dies outright (killed, segmentation fault) is torchrun's to handle — its agent stops
the other workers — and the process group's timeout (``CALIBSCOPE_DISTRIBUTED_TIMEOUT`` seconds, default 1800)
is the last resort.
"""

from __future__ import annotations

import datetime
import importlib
import os
import pickle
import struct
from dataclasses import dataclass
from typing import Any

import torch

from calibscope.conventions import contiguous_shard
from calibscope.errors import CalibscopeError, InputError

__all__ = [
    "Distributed",
    "Failure",
    "RankFailed",
    "current",
    "init_from_environment",
    "launched_by_torchrun",
    "shutdown",
]

TIMEOUT_ENV = "CALIBSCOPE_DISTRIBUTED_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
_MESSAGE_BYTES = 4096
_HEADER = struct.Struct("<iii")  # present, exit code, message length
_MAX_DIMS = 8
_DTYPES = (torch.float32, torch.float64, torch.int64, torch.int32, torch.uint8, torch.bool, torch.float16,
           torch.bfloat16, torch.int8, torch.int16)

_current: Distributed | None = None


@dataclass(frozen=True)
class Failure:
    """What ended a command on one rank: its exit code (2 bad input, 1 gate, 3 internal, 130 interrupted),
    the kind shown before the message (``error``, ``gate failed``, ``internal error`` …) and the message."""

    rank: int
    exit_code: int
    kind: str
    message: str


class RankFailed(CalibscopeError):
    """Another rank failed; raised on the healthy ranks at their next collective."""

    def __init__(self, failure: Failure, world_size: int):
        self.failure = failure
        self.world_size = world_size
        super().__init__(f"rank {failure.rank} of {world_size}: {failure.kind}: {failure.message}")


def _world_size_from_environment() -> int:
    text = os.environ.get("WORLD_SIZE", "").strip()
    if not text:
        return 1
    try:
        return int(text)
    except ValueError:
        raise InputError(f"WORLD_SIZE must be an integer (torchrun sets it), got '{text}'") from None


def launched_by_torchrun() -> bool:
    """True when the environment describes more than one process (``WORLD_SIZE > 1``)."""
    return _world_size_from_environment() > 1


def _timeout_seconds() -> float:
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise InputError(f"{TIMEOUT_ENV} must be a positive number of seconds, got '{text}'")
    return value


def _env_int(name: str, default: int | None = None) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        if default is None:
            raise InputError(f"WORLD_SIZE is set but {name} is not: start the processes with torchrun")
        return default
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{name} must be an integer (torchrun sets it), got '{text}'") from None


def init_from_environment() -> Distributed | None:
    """Join the process group that ``torchrun`` describes in the environment, once; None for one process.

    Picks ``cuda:LOCAL_RANK`` (and makes it the current CUDA device, so ``--device auto`` resolves to it)
    when CUDA is available. Reuses a default process group that the caller already initialised.
    """
    global _current
    if _current is not None:
        return _current
    world = _world_size_from_environment()
    if world <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_available():
        raise InputError(f"WORLD_SIZE={world} but this torch build ({torch.__version__}) has no torch.distributed")
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", rank)
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise InputError(f"LOCAL_RANK {local_rank} but only {count} CUDA device(s) are visible: start at most "
                             f"{count} processes per node (torchrun --nproc_per_node={count})")
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "cpu:gloo,cuda:nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    owns = not dist.is_initialized()
    if owns:
        # torch._dynamo (imported by torch.export.load, i.e. by every .pt2 checkpoint) keeps references to the
        # process groups that exist when it is first imported, so destroy_process_group could not stop gloo's
        # worker threads, and one of them, still dropping a finished collective's tensors as Python shut down,
        # aborted the process ("terminate called without an active exception") after a successful run.
        # Imported before the group exists, it holds none.
        importlib.import_module("torch._dynamo")

        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=_timeout_seconds()))
    _current = Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                           device=device, backend=backend, owns_group=owns)
    return _current


def current() -> Distributed | None:
    """This process's place among the ranks, once :func:`init_from_environment` joined a group; else None."""
    return _current


def shutdown() -> None:
    """Leave the process group (destroying it if :func:`init_from_environment` created it)."""
    global _current
    ctx, _current = _current, None
    if ctx is not None and ctx.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


@dataclass(frozen=True)
class Distributed:
    """One rank of ``world_size``; ``device`` carries the payload collectives (``cuda:LOCAL_RANK`` under NCCL,
    else the CPU); status flags and messages always travel through gloo on the CPU."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    owns_group: bool = True

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints and writes files."""
        return self.rank == 0

    def shard(self, n: int, *, unit: int = 1) -> tuple[int, int]:
        """This rank's contiguous rows ``[start, stop)`` of ``n`` (:func:`calibscope.conventions.contiguous_shard`)."""
        return contiguous_shard(n, self.rank, self.world_size, unit=unit)

    # -- failures ------------------------------------------------------------------------------------------

    def _flag(self, failed: bool) -> bool:
        import torch.distributed as dist

        flag = torch.tensor([1 if failed else 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _failures(self, mine: Failure | None) -> list[Failure]:
        import torch.distributed as dist

        record = _encode_failure(mine)
        records = [torch.empty_like(record) for _ in range(self.world_size)]
        dist.all_gather(records, record)
        return [f for f in (_decode_failure(r, i) for i, r in enumerate(records)) if f is not None]

    def check_peers(self) -> None:
        """Raise :class:`RankFailed` if another rank has failed (a collective: every rank calls it)."""
        if self._flag(False):
            raise RankFailed(self._failures(None)[0], self.world_size)

    def settle(self, failure: Failure | None) -> Failure | None:
        """The end of a command on this rank, successful (``None``) or not: returns the first failure of any
        rank (lowest rank first), or None when every rank succeeded. A collective: healthy ranks that are
        still working meet it at their next collective (:meth:`check_peers`)."""
        if not self._flag(failure is not None):
            return None
        return self._failures(failure)[0]

    # -- payload collectives -------------------------------------------------------------------------------

    def all_true(self, value: bool) -> bool:
        """Whether ``value`` holds on every rank."""
        import torch.distributed as dist

        self.check_peers()
        flag = torch.tensor([1 if value else 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over the ranks (same shape on every rank), on its own device."""
        import torch.distributed as dist

        self.check_peers()
        out = tensor.detach().to(self.device, copy=True)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(tensor.device)

    def all_gather_rows(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        """Every rank's rows, concatenated in rank order, on every rank (on the CPU unless ``tensor`` is on a
        GPU). ``None`` stands for no rows of a yet unknown shape (an empty shard); None if all are None."""
        return self._gather(tensor, dst=None)

    def gather_rows(self, tensor: torch.Tensor | None, *, dst: int = 0) -> torch.Tensor | None:
        """As :meth:`all_gather_rows`, but only rank ``dst`` receives the rows; the others get None."""
        return self._gather(tensor, dst=dst)

    def _gather(self, tensor: torch.Tensor | None, *, dst: int | None) -> torch.Tensor | None:
        import torch.distributed as dist

        self.check_peers()
        headers = [torch.empty(3 + _MAX_DIMS, dtype=torch.int64) for _ in range(self.world_size)]
        dist.all_gather(headers, _describe(tensor))
        shapes = [_undescribe(h) for h in headers]
        known = [(rows, dtype, trailing) for rows, dtype, trailing in shapes if dtype is not None]
        if not known:
            return None
        _, dtype, trailing = known[0]
        if any(t != trailing or d != dtype for _, d, t in known):
            found = sorted({(str(d), tuple(t)) for _, d, t in known})
            raise InputError(f"the ranks hold rows of different shapes or types {found}; they must agree")
        rows = [r for r, _, _ in shapes]
        longest = max(rows)
        padded = torch.zeros((longest, *trailing), dtype=dtype, device=self.device)
        if tensor is not None and tensor.shape[0]:
            padded[: tensor.shape[0]] = tensor.detach().to(self.device)
        home = tensor.device if tensor is not None else torch.device("cpu")
        if dst is None:
            parts = [torch.empty_like(padded) for _ in range(self.world_size)]
            dist.all_gather(parts, padded)
        else:
            parts = [torch.empty_like(padded) for _ in range(self.world_size)] if self.rank == dst else None
            dist.gather(padded, parts, dst=dst)
            if parts is None:
                return None
        return torch.cat([p[:r] for p, r in zip(parts, rows, strict=True)]).to(home)

    def broadcast_object(self, obj: Any, *, src: int = 0) -> Any:
        """``obj`` of rank ``src`` on every rank (pickled: for calibscope's own small metadata only)."""
        import torch.distributed as dist

        self.check_peers()
        data = pickle.dumps(obj) if self.rank == src else b""
        size = torch.tensor([len(data)], dtype=torch.int64)
        dist.broadcast(size, src=src)
        buffer = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.rank == src
                  else torch.empty(int(size.item()), dtype=torch.uint8))
        dist.broadcast(buffer, src=src)
        return obj if self.rank == src else pickle.loads(buffer.numpy().tobytes())  # noqa: S301 - our own ranks


def _describe(tensor: torch.Tensor | None) -> torch.Tensor:
    header = torch.zeros(3 + _MAX_DIMS, dtype=torch.int64)
    header[1] = -1
    if tensor is None:
        return header
    if tensor.ndim < 1 or tensor.ndim - 1 > _MAX_DIMS or tensor.dtype not in _DTYPES:
        raise InputError(f"cannot gather a tensor of shape {tuple(tensor.shape)} and type {tensor.dtype}")
    header[0] = tensor.shape[0]
    header[1] = _DTYPES.index(tensor.dtype)
    header[2] = tensor.ndim - 1
    header[3:3 + tensor.ndim - 1] = torch.tensor(tensor.shape[1:], dtype=torch.int64)
    return header


def _undescribe(header: torch.Tensor) -> tuple[int, torch.dtype | None, tuple[int, ...]]:
    values = header.tolist()
    if values[1] < 0:
        return 0, None, ()
    return values[0], _DTYPES[values[1]], tuple(values[3:3 + values[2]])


def _encode_failure(failure: Failure | None) -> torch.Tensor:
    out = torch.zeros(_HEADER.size + _MESSAGE_BYTES, dtype=torch.uint8)
    if failure is None:
        return out
    text = f"{failure.kind}\n{failure.message}".encode("utf-8", "replace")[:_MESSAGE_BYTES]
    blob = _HEADER.pack(1, failure.exit_code, len(text)) + text
    out[: len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    return out


def _decode_failure(record: torch.Tensor, rank: int) -> Failure | None:
    raw = record.numpy().tobytes()
    present, code, length = _HEADER.unpack_from(raw)
    if not present:
        return None
    kind, _, message = raw[_HEADER.size:_HEADER.size + length].decode("utf-8", "replace").partition("\n")
    return Failure(rank=rank, exit_code=code, kind=kind, message=message)
