"""StreamingCalibration.sync() and CalibscopeECE over 2 gloo ranks equal the one-shot metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from calibscope.diagnostics.calibration import ALL_METRICS, calibration_metrics

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_sync_worker.py")


def test_two_ranks_sync_to_the_one_shot_metrics(tmp_path):
    sys.path.insert(0, str(WORKER.parent))
    from _sync_worker import data

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    job = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "--monitor-interval=0.2", str(WORKER), str(tmp_path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=180)
    assert job.returncode == 0, job.stderr[-3000:]
    whole = calibration_metrics(*data())
    for rank in (0, 1):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert record["n"] == whole.n == 1100
        for name in ALL_METRICS:
            assert abs(record["values"][name] - whole.value(name)) <= 1e-12, (rank, name)
        assert record["kept_rows"] == 1100 and record["kept_equal"]  # gathered in rank order
        if record["torchmetrics_ece"] is not None or os.environ.get("CI"):
            assert abs(record["torchmetrics_ece"] - whole.value("ece")) <= 1e-12
