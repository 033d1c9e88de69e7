"""Bigger than memory: logits files read by rows, mapped datasets, and ``ece`` in bounded memory.

The acceptance run (2,000,000 × 1,000 float32 logits, 8 GB) is ``python tests/distributed/_memory.py``;
here the same code path runs on two small files and the peak resident set must not grow with the file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from calibscope.cli import app
from calibscope.diagnostics.calibration import calibration_metrics, streamed_calibration_metrics
from calibscope.errors import InputError
from calibscope.loading.checkpoint import load_checkpoint, open_logits_rows
from calibscope.loading.dataset import load_dataset
from calibscope.loading.files import stored_arrays

REPO = Path(__file__).resolve().parents[2]
MEMORY = Path(__file__).with_name("_memory.py")
SAMPLE_LOGITS = REPO / "sample_checkpoints" / "digits_hard_test_logits.npz"


def _measure(path: Path) -> dict:
    # glibc's adaptive mmap threshold keeps freed 16–32 MB chunk temporaries in the heap a varying number of
    # times, which moves the peak by ±200 MB from run to run; a fixed threshold makes it reproducible
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MALLOC_MMAP_THRESHOLD_": "1048576"}
    job = subprocess.run([sys.executable, str(MEMORY), "ece", str(path)], env=env, capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert job.returncode == 0, job.stderr[-2000:]
    return json.loads(job.stdout.strip().splitlines()[-1])


def test_ece_memory_does_not_grow_with_the_logits_file(tmp_path):
    """200,000 more rows of 200 logits (800 bytes each on disk) cost about 25 bytes each in memory — the
    confidences, correctness and labels that ACE needs — not the logits."""
    sys.path.insert(0, str(MEMORY.parent))
    from _memory import make

    small, big = tmp_path / "small.npz", tmp_path / "big.npz"
    make(small, 40_000, 200)
    make(big, 240_000, 200)
    a, b = _measure(small), _measure(big)
    assert (a["n"], b["n"]) == (40_000, 240_000)
    per_row = (b["peak_mib"] - a["peak_mib"]) * 2**20 / 200_000
    assert per_row < 200, (per_row, a, b)  # a row of logits is 800 bytes
    # and the streamed ECE is the ECE: the small file, loaded whole, through the one-shot function
    with np.load(small) as data:
        whole = calibration_metrics(torch.from_numpy(data["logits"]), torch.from_numpy(data["labels"]))
    assert abs(a["ece"] - whole.value("ece")) < 1e-12


def test_stored_arrays_read_rows_of_every_format(tmp_path):
    from safetensors.torch import save_file

    x = torch.randn(101, 7, generator=torch.Generator().manual_seed(0))
    np.savez(tmp_path / "a.npz", logits=x.numpy(), labels=np.arange(101))
    np.save(tmp_path / "b.npy", x.numpy().astype(">f8"))
    save_file({"logits": x, "half": x.to(torch.bfloat16)}, str(tmp_path / "c.safetensors"))
    a, b, c = (stored_arrays(tmp_path / f) for f in ("a.npz", "b.npy", "c.safetensors"))
    assert torch.equal(a["logits"].rows(3, 50), x[3:50]) and a["labels"].rows(0, 200).tolist() == list(range(101))
    assert torch.equal(b[""].rows(1, 3), x[1:3].double())
    assert torch.equal(c["logits"].rows(0, 101), x) and torch.equal(c["half"].rows(5, 9), x[5:9].to(torch.bfloat16))
    np.savez_compressed(tmp_path / "d.npz", logits=x.numpy())
    assert stored_arrays(tmp_path / "d.npz") == {}  # deflated members are loaded the usual way


def test_logits_read_by_rows_equal_the_loaded_file(tmp_path):
    with np.load(SAMPLE_LOGITS) as data:
        arrays = {k: data[k] for k in data.files}
    np.savez(tmp_path / "logits.npz", **arrays)
    np.savez(tmp_path / "probs.npz", probs=torch.softmax(torch.from_numpy(arrays["logits"]), 1).numpy(),
             labels=arrays["labels"])
    for name in ("logits.npz", "probs.npz"):
        rows, whole = open_logits_rows(tmp_path / name, chunk_rows=100), load_checkpoint(tmp_path / name)
        assert rows.from_probabilities == whole.from_probabilities == (name == "probs.npz")
        assert torch.equal(rows.read(0, rows.num_examples), whole.logits) and torch.equal(rows.labels, whole.labels)
        assert rows.metadata.get("class_names") == whole.metadata.get("class_names")
    assert open_logits_rows(SAMPLE_LOGITS) is None  # compressed: loaded whole
    assert open_logits_rows(tmp_path / "logits.npz", min_bytes=1 << 30) is None  # small: loaded whole
    np.savez(tmp_path / "bad_probs.npz", probs=arrays["logits"])
    with pytest.raises(InputError, match="'probs' are not probabilities"):
        open_logits_rows(tmp_path / "bad_probs.npz")


def test_streamed_metrics_equal_the_one_shot_metrics_and_take_empty_parts():
    g = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(5000, 10, generator=g)
    y = torch.randint(0, 10, (5000,), generator=g)
    whole = calibration_metrics(z, y)
    streamed = streamed_calibration_metrics(zip(z.split(777), y.split(777), strict=True), num_classes=10)
    for name, metric in whole.metrics.items():
        assert abs(metric.value - streamed.value(name)) < 1e-12, name
    assert streamed.report.bins.count == whole.report.bins.count
    # two "ranks" as threads with hand-made collectives; rank 0 holds nothing (an empty shard)
    import threading

    barrier, slots, results = threading.Barrier(2), [None, None], [None, None]

    def collective(rank, combine):
        def call(t):
            slots[rank] = t
            barrier.wait()
            out = combine(slots[0], slots[1])
            barrier.wait()
            return out
        return call

    def rank_main(rank, batches):
        results[rank] = streamed_calibration_metrics(
            batches, num_classes=10, reduce=collective(rank, lambda a, b: a + b),
            gather=collective(rank, lambda a, b: torch.cat([a, b])))

    threads = [threading.Thread(target=rank_main, args=(0, [])), threading.Thread(target=rank_main, args=(1, [(z, y)]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for result in results:
        assert abs(result.value("ece") - whole.value("ece")) < 1e-12 and result.n == 5000
    with pytest.raises(InputError, match="N = 0"):
        streamed_calibration_metrics([], num_classes=10)


def _mapped_from(tensor: torch.Tensor, path: Path) -> bool:
    """Whether ``tensor``'s memory lies in a mapping of ``path`` (Linux: /proc/self/maps)."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *rest = line.split(maxsplit=5)
        if rest and rest[-1] == str(path):
            lo, hi = (int(v, 16) for v in span.split("-"))
            if lo <= address < hi:
                return True
    return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps")
def test_big_tensor_datasets_are_mapped_not_read(tmp_path, monkeypatch):
    import calibscope.loading.dataset as dataset_module

    monkeypatch.setattr(dataset_module, "MAP_MIN_BYTES", 1024)
    x = np.random.default_rng(0).integers(0, 256, (500, 1, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(500) % 10)
    np.save(tmp_path / "x.npy", x)
    ds = load_dataset(tmp_path / "d.npz", limit=301)
    assert _mapped_from(ds.inputs, tmp_path / "d.npz") and ds.inputs.shape == (301, 1, 8, 8)
    assert np.array_equal(ds.inputs.numpy(), x[:301]) and ds.labels.tolist() == (np.arange(301) % 10).tolist()
    assert _mapped_from(load_dataset(tmp_path / "x.npy").inputs, tmp_path / "x.npy")
    monkeypatch.setattr(dataset_module, "MAP_MIN_BYTES", 64 << 20)
    assert not _mapped_from(load_dataset(tmp_path / "x.npy").inputs, tmp_path / "x.npy")  # small: read


def test_ece_cli_reads_a_logits_file_by_rows(tmp_path, monkeypatch):
    with np.load(SAMPLE_LOGITS) as data:
        np.savez(tmp_path / "logits.npz", **{k: data[k] for k in data.files})
    runner = CliRunner()
    loaded = runner.invoke(app, ["ece", str(tmp_path / "logits.npz"), "--json"])
    monkeypatch.setenv("CALIBSCOPE_STREAM_MIN_BYTES", "0")
    streamed = runner.invoke(app, ["ece", str(tmp_path / "logits.npz"), "--json", "--limit", "1000"])
    limited = runner.invoke(app, ["ece", str(SAMPLE_LOGITS), "--json", "--limit", "1000"])
    assert loaded.exit_code == streamed.exit_code == limited.exit_code == 0, streamed.output
    a, b = json.loads(streamed.stdout)["results"][0], json.loads(limited.stdout)["results"][0]
    assert a["n"] == b["n"] == 1000 and a["ece"] == pytest.approx(b["ece"], rel=1e-12)
    assert json.loads(loaded.stdout)["results"][0]["n"] == 1347
