"""The batched inference engine: the only place that moves batches to a device and calls the model.

One pass over the data in large batches: uint8 images travel as uint8 (4× less host→device traffic) and
become float in [0, 1] (÷255) and then ``(x − mean) / std`` on the device; host batches are pinned and
copied with ``non_blocking`` on a side CUDA stream by a background thread, so the GPU does not wait; on a
CUDA out-of-memory error the batch is halved and the pass goes on (said once). fp32 by default — calibration
numbers must not move with the hardware — and ``bf16``/``fp16`` only by autocast when asked for.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from calibscope.errors import InputError
from calibscope.feeding import ModelCall
from calibscope.inference.device import autocast_dtype, resolve_device
from calibscope.inference.features import attach_feature_tap
from calibscope.inference.outputs import Outputs

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.inference.distributed import Distributed

DEFAULT_BATCH_SIZE = 1024  # the largest batch the automatic choice makes (and the default for small inputs)
# Automatic batch size: the float32 input of one batch may take this many bytes (times _ACTIVATION_FACTOR for
# the activations a CNN keeps alive at its widest layer; ResNet-18 at 224² peaks near 6× its input), at most
# this fraction of the free memory, and a dataset is split into at least _MIN_BATCHES when the examples are
# large (so the progress bar moves). CPU: 8 MiB of input per batch — a batch whose activations stay near the
# last-level cache is the fastest: ResNet-18 at 224², 2-core machine, img/s by batch 4: 49.6, 8: 48.8–53.1,
# 16: 40.4–41.0, 32: 35.7–40.0, 64: 29.1, 256: 23.6 (benchmarks/batch_size.py, idle); digits keep 1024.
AUTO_BATCH_INPUT_BYTES = {"cpu": 8 << 20, "cuda": 2 << 30}
_ACTIVATION_FACTOR = 8
_FREE_MEMORY_FRACTION = 0.25
_MIN_BATCHES = 8
_LARGE_EXAMPLE_BYTES = 64 << 10  # examples above this size (float32) count as large


def _free_memory_bytes(device: torch.device) -> int | None:
    """Free memory of ``device``: CUDA's ``mem_get_info``, or MemAvailable from /proc/meminfo on the host."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except RuntimeError:  # pragma: no cover
            return None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        return None
    return None  # pragma: no cover


def automatic_batch_size(inputs: torch.Tensor, device: torch.device, *, free_bytes: int | None = None) -> int:
    r"""The batch size run_inference uses when none is given, from the size of one example and free memory.

    .. math::

        b = \min\Bigl(1024,\ \frac{\min(B_{dev},\ f \cdot \mathrm{free} / 8)}{4 \cdot \mathrm{numel}(x_1)},\
        \lceil N / 8 \rceil \text{ (large examples only)}\Bigr),

    rounded down to a power of two, at least 1: B_dev is :data:`AUTO_BATCH_INPUT_BYTES` (8 MiB on CPU,
    2 GiB on CUDA), f = 1/4, 8 the activation factor. Small examples (digits) get 1024, CIFAR 512; ResNet inputs
    at 224² get 8 on CPU. Deterministic for a given input and machine state, and it never changes the
    numbers beyond float32 rounding of the convolution algorithm a batch size selects.
    """
    n = int(inputs.shape[0])
    per_example = 4 * max(1, int(inputs[0].numel()) if n else 1)
    budget = AUTO_BATCH_INPUT_BYTES.get(device.type, AUTO_BATCH_INPUT_BYTES["cpu"])
    free = _free_memory_bytes(device) if free_bytes is None else free_bytes
    if free is not None:
        budget = min(budget, int(_FREE_MEMORY_FRACTION * free) // _ACTIVATION_FACTOR)
    size = min(DEFAULT_BATCH_SIZE, max(1, budget // per_example))
    if per_example >= _LARGE_EXAMPLE_BYTES:
        size = min(size, max(1, -(-n // _MIN_BATCHES)))
    return 1 << (size.bit_length() - 1)


@dataclass(frozen=True)
class InferenceOptions:
    """Everything that changes the numbers (and so the cache key) or how they are computed."""

    device: str = "auto"
    precision: str = "fp32"
    batch_size: int | None = None  # None: automatic_batch_size(inputs, device)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    capture_features: bool = False
    layer: str | None = None
    output: str | int | None = None  # --output: which of a non-tensor output holds the logits
    # MC-dropout (calibscope.inference.mc_dropout): which stochastic pass this run is (None: deterministic, the
    # model fully in eval mode) and the seed of its dropout masks
    dropout_pass: int | None = None
    dropout_seed: int = 0


def with_checkpoint_normalisation(options: InferenceOptions, metadata: dict) -> InferenceOptions:
    """``options`` with ``mean``/``std`` from a checkpoint's metadata when the options give none: the one
    normalisation rule (``--mean``/``--std`` win; else the checkpoint's ``mean``/``std``; else none)."""
    from dataclasses import replace

    if options.mean is None and metadata.get("mean") is not None and metadata.get("std") is not None:
        return replace(options, mean=tuple(map(float, metadata["mean"])), std=tuple(map(float, metadata["std"])))
    return options


def _validate_options(options: InferenceOptions) -> None:
    if options.batch_size is not None and (not isinstance(options.batch_size, int) or options.batch_size < 1):
        raise InputError(f"Expected argument `batch_size` to be an integer larger than 0, but got "
                         f"{options.batch_size}")
    autocast_dtype(options.precision)
    if (options.mean is None) != (options.std is None):
        raise InputError("--mean and --std go together: give both or neither")
    if options.std is not None and any(s <= 0 for s in options.std):
        raise InputError(f"every --std value must be positive, got {list(options.std)}")
    if options.mean is not None and len(options.mean) != len(options.std or ()):
        raise InputError(f"--mean has {len(options.mean)} values but --std has {len(options.std or ())}")


class _Batches:
    """Yields device batches ``(start, x)``; on CUDA a background thread pins and copies ahead."""

    def __init__(self, inputs: torch.Tensor, device: torch.device, channels_last: bool):
        self.inputs = inputs
        self.device = device
        self.channels_last = channels_last

    def _host(self, start: int, stop: int) -> torch.Tensor:
        return self.inputs[start:stop]

    def iterate(self, batch_size: Callable[[], int], start: int = 0) -> Iterator[tuple[int, int, torch.Tensor]]:
        n = self.inputs.shape[0]
        if self.device.type != "cuda":
            while start < n:
                stop = min(n, start + batch_size())
                yield start, stop, self._host(start, stop).to(self.device)
                start = stop
            return
        yield from self._iterate_cuda(batch_size, start)

    def _iterate_cuda(self, batch_size, start):
        n = self.inputs.shape[0]
        copy_stream = torch.cuda.Stream(self.device)
        q: queue.Queue = queue.Queue(maxsize=3)
        stop_flag = threading.Event()
        planned = {"bs": batch_size()}

        def producer():
            s = start
            try:
                while s < n and not stop_flag.is_set():
                    e = min(n, s + planned["bs"])
                    host = self._host(s, e).pin_memory()
                    with torch.cuda.stream(copy_stream):
                        dev = host.to(self.device, non_blocking=True)
                        if self.channels_last and dev.ndim == 4:
                            dev = dev.contiguous(memory_format=torch.channels_last)
                        event = torch.cuda.Event()
                        event.record(copy_stream)
                    q.put((s, e, dev, event))
                    s = e
            except BaseException as exc:  # pragma: no cover - surfaced in the consumer
                q.put(exc)
                return
            q.put(None)

        thread = threading.Thread(target=producer, daemon=True, name="calibscope-loader")
        thread.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                s, e, dev, event = item
                torch.cuda.current_stream(self.device).wait_event(event)
                dev.record_stream(torch.cuda.current_stream(self.device))
                planned["bs"] = batch_size()
                yield s, e, dev
        finally:
            stop_flag.set()
            while thread.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _prepare_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    try:
        model.eval()
    except NotImplementedError:  # torch.export programs: mode is fixed at export time
        pass
    model = model.to(device)
    if channels_last:
        try:
            model = model.to(memory_format=torch.channels_last)
        except (RuntimeError, TypeError):  # pragma: no cover - some modules refuse; fine either way
            pass
    return model


def _model_call(model: nn.Module, inputs, device: torch.device, options: InferenceOptions,
                notify: Callable[[str], None]) -> ModelCall:
    call = ModelCall(model, inputs, device=device, mean=options.mean, std=options.std, output=options.output,
                     notify=notify)
    if call.static_batch is not None and options.batch_size != call.static_batch:
        notify(f"the exported program was exported for batch size {call.static_batch}: running batches of "
               f"{call.static_batch} (the last one padded) instead of {options.batch_size}")
    return call


def run_inference(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    options: InferenceOptions | None = None,
    progress: bool | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> Outputs:
    """Run ``model`` over ``inputs`` once, in batches, and return logits (float32, CPU) and labels.

    ``progress=None`` shows a bar on stderr only when stderr is a terminal. ``on_notice`` receives one-line
    notices (e.g. the batch size was halved after a CUDA OOM); by default they go to stderr.
    """
    options = options or InferenceOptions()
    _validate_options(options)
    if inputs.shape[0] == 0:
        raise InputError("the dataset is empty: nothing to run the model on")
    device = resolve_device(options.device)
    amp_dtype = autocast_dtype(options.precision)
    channels_last = device.type == "cuda" and inputs.ndim == 4 and isinstance(inputs, torch.Tensor)
    notify = on_notice or (lambda msg: print(f"calibscope: {msg}", file=sys.stderr))
    model = _prepare_model(model, device, channels_last)
    stochastic = options.dropout_pass is not None
    if stochastic:
        from calibscope.inference.mc_dropout import enable_dropout

        dropout_names = enable_dropout(model)
    requested = "auto" if options.batch_size is None else options.batch_size
    if options.batch_size is None:
        from dataclasses import replace

        options = replace(options, batch_size=automatic_batch_size(inputs, device))
    call = _model_call(model, inputs, device, options, notify)
    n = inputs.shape[0]
    tap = None
    state = {"bs": options.batch_size if call.static_batch is None else call.static_batch, "halved": False}
    logits_parts: list[torch.Tensor] = []
    feature_parts: list[torch.Tensor] = []
    show = sys.stderr.isatty() if progress is None else progress
    bar = _ProgressBar(n, enabled=show)
    t0 = time.perf_counter()
    start = 0
    batches = _Batches(inputs, device, channels_last)
    rng = _forked_rng(device, enabled=stochastic)
    try:
        with torch.inference_mode(), rng:
            while start < n:
                try:
                    for s, e, x in batches.iterate(lambda: state["bs"], start):
                        x = call.prepare(x)
                        if stochastic:
                            from calibscope.inference.mc_dropout import batch_seed

                            torch.manual_seed(batch_seed(options.dropout_seed, options.dropout_pass, s))
                        if amp_dtype is not None:
                            with torch.autocast(device_type=device.type, dtype=amp_dtype):
                                out = call.logits(x)
                        else:
                            out = call.logits(x)
                        if options.capture_features and tap is None:
                            tap = attach_feature_tap(call.model, out.shape[1], layer=options.layer)
                            call.model = tap.model
                            out = call.logits(x)  # first batch again, now recorded
                        if tap is not None:
                            feature_parts.append(tap.take()[: e - s].float())
                        logits_parts.append(out.float())
                        start = e
                        bar.advance(e - s)
                except Exception as exc:  # noqa: BLE001
                    if not (device.type == "cuda" and _is_oom(exc)) or state["bs"] == 1 or call.static_batch:
                        raise
                    torch.cuda.empty_cache()
                    state["bs"] = max(1, state["bs"] // 2)
                    if not state["halved"]:
                        notify(f"CUDA ran out of memory; halving the batch size (now {state['bs']}) and going on")
                        state["halved"] = True
    finally:
        bar.close()
        if tap is not None:
            tap.remove()
        if stochastic:
            model.eval()  # the module is shared with later deterministic runs
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    logits = torch.cat(logits_parts).cpu()
    features = torch.cat(feature_parts).cpu() if feature_parts else None
    meta = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "precision": options.precision,
        "batch_size": state["bs"],
        "batch_size_requested": requested,
        "mean": list(options.mean) if options.mean is not None else None,
        "std": list(options.std) if options.std is not None else None,
        "seconds": seconds,
        "examples_per_second": n / seconds if seconds > 0 else None,
        "torch_version": torch.__version__,
    }
    if tap is not None:
        meta["feature_layer"] = tap.layer_name
    if call.chosen_output is not None:
        meta["output"] = call.chosen_output
    if call.static_batch is not None:
        meta["static_batch_size"] = call.static_batch
    if stochastic:
        meta["mc_dropout"] = {"pass": options.dropout_pass, "seed": options.dropout_seed,
                              "dropout_layers": dropout_names}
    return Outputs(
        logits=logits.contiguous(),
        labels=None if labels is None else labels.to(torch.int64).cpu(),
        features=features,
        weight=None if tap is None else tap.weight.float().cpu().clone(),
        bias=None if tap is None or tap.bias is None else tap.bias.float().cpu().clone(),
        meta=meta,
    )


def _forked_rng(device: torch.device, *, enabled: bool):
    """``torch.random.fork_rng`` over the CPU and ``device`` (MC-dropout reseeds the global generators)."""
    import contextlib

    if not enabled:
        return contextlib.nullcontext()
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices, device_type=device.type if device.type == "cuda" else "cuda")


def run_inference_sharded(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    group: Distributed,
    options: InferenceOptions | None = None,
    progress: bool | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> Outputs:
    """:func:`run_inference` over this rank's contiguous shard of ``inputs``; every rank gets everything.

    Rank r runs rows ``group.shard(N)`` (exactly N rows overall, no padding duplicates); the logits (and
    features) of all ranks are then gathered, in order, on every rank, so the result equals one process's
    run over all rows. The class templates and ``meta`` are rank 0's (which always holds rows); ``seconds``
    is the slowest rank's. Only rank 0 shows a progress bar.
    """
    n = int(inputs.shape[0])
    if n == 0:
        raise InputError("the dataset is empty: nothing to run the model on")
    start, stop = group.shard(n)
    local = None
    if stop > start:
        local = run_inference(model, inputs[start:stop], options=options, on_notice=on_notice,
                              progress=progress if group.is_main else False)
    logits = group.all_gather_rows(None if local is None else local.logits)
    features = group.all_gather_rows(None if local is None else local.features)
    seconds = group.all_gather_rows(torch.tensor([[0.0 if local is None else local.meta["seconds"]]],
                                                 dtype=torch.float64))
    first = group.broadcast_object(None if not group.is_main else
                                   {"weight": local.weight, "bias": local.bias, "meta": local.meta})
    slowest = float(seconds.max())
    rows = [b - a for a, b in _shards(n, group)]
    meta = {**first["meta"], "seconds": slowest, "examples_per_second": n / slowest if slowest > 0 else None,
            "distributed": {"world_size": group.world_size, "backend": group.backend, "rows_per_rank": rows}}
    return Outputs(logits=logits.contiguous(), labels=None, features=features, weight=first["weight"],
                   bias=first["bias"], meta=meta)


def _shards(n: int, group: Distributed) -> list[tuple[int, int]]:
    from calibscope.conventions import contiguous_shard

    return [contiguous_shard(n, r, group.world_size) for r in range(group.world_size)]


class _ProgressBar:
    """A rich progress bar on stderr (only when enabled)."""

    def __init__(self, total: int, *, enabled: bool):
        self._progress = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("inference"), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self._progress.start()
        self._task = self._progress.add_task("inference", total=total)

    def advance(self, k: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, k)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
