"""Two ranks of ``torchrun`` feed disjoint shards to StreamingCalibration and CalibscopeECE, then sync.

    torchrun --standalone --nproc_per_node=2 tests/distributed/_sync_worker.py OUT_DIR

Rank r writes ``OUT_DIR/rank{r}.json`` with every metric after ``sync()`` and the torchmetrics ECE.
The data and the shard split (unequal, rank 1 also gets an empty batch) are those of :func:`shards`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    z = 2 * torch.randn(1100, 6, generator=g)
    return z, torch.multinomial((1.5 * z).softmax(1), 1, generator=g).squeeze(1)


SPLIT = 430  # rank 0 holds rows [0, 430), rank 1 rows [430, 1100)


def main() -> None:
    import torch.distributed as dist

    from calibscope import StreamingCalibration
    from calibscope.diagnostics.calibration import ALL_METRICS

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    z, y = data()
    z, y = (z[:SPLIT], y[:SPLIT]) if rank == 0 else (z[SPLIT:], y[SPLIT:])
    stream, kept = StreamingCalibration(), StreamingCalibration(keep_logits=True)
    for zb, yb in zip(z.tensor_split(5), y.tensor_split(5), strict=True):
        stream.update(zb, yb)
        kept.update(zb, yb)
    if rank == 1:
        stream.update(z[:0], y[:0])
    metrics = stream.sync().compute()
    kept.sync()
    record = {"n": metrics.n, "values": {k: metrics.value(k) for k in ALL_METRICS},
              "kept_rows": int(kept.logits.shape[0]), "kept_equal": bool(torch.equal(kept.labels, data()[1]))}
    try:
        from calibscope.integrations.torchmetrics import CalibscopeECE
    except ImportError:
        record["torchmetrics_ece"] = None
    else:
        metric = CalibscopeECE()
        metric.update(z, y)
        record["torchmetrics_ece"] = float(metric.compute())  # torchmetrics syncs the states itself
    (Path(sys.argv[1]) / f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
