"""`calibscope ece` end to end: formats, outputs, the gate, and the bad-input matrix (exit 2, one line, no
traceback, no output left behind). Numbers are checked against a float64 numpy computation of Guo's ECE."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from calibscope.cli import app
from calibscope.models import DigitsCNN

runner = CliRunner()


def invoke(*args: str | Path, cwd: Path | None = None, monkeypatch=None):
    if cwd is not None:
        monkeypatch.chdir(cwd)
    return runner.invoke(app, [str(a) for a in args])


def numpy_ece(logits: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf, pred = p.max(1), p.argmax(1)
    acc = (pred == labels).astype(np.float64)
    ece = 0.0
    for m in range(1, n_bins + 1):
        lo, hi = (m - 1) / n_bins, m / n_bins
        sel = (conf > lo) & (conf <= hi) | ((conf == 0) & (m == 1))
        if sel.any():
            ece += sel.mean() * abs(acc[sel].mean() - conf[sel].mean())
    return ece


@pytest.fixture(scope="module")
def test_split(samples):
    d = np.load(samples / "digits_test.npz")
    return d["images"], d["labels"]


def eager_logits(samples, images) -> np.ndarray:
    """The hard model, rebuilt by hand from its safetensors weights and normalisation metadata."""
    from safetensors import safe_open

    path = samples / "digits_hard.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    model = DigitsCNN(**json.loads(meta["calibscope.arch_kwargs"]))
    model.load_state_dict(load_file(str(path)))
    mean, std = json.loads(meta["calibscope.mean"])[0], json.loads(meta["calibscope.std"])[0]
    x = (torch.from_numpy(images).float() / 255 - mean) / std
    with torch.no_grad():
        return model.eval()(x).numpy()


@pytest.mark.parametrize("name", ["digits_hard.pt2", "digits_hard.ts", "digits_hard.safetensors",
                                  "digits_hard_test_logits.npz"])
def test_every_format_gives_the_reference_ece(samples, test_split, name):
    images, labels = test_split
    result = invoke("ece", samples / name, "--data", samples / "digits_test.npz", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "calibscope/ece" and doc["schema_version"] == 1
    entry = doc["results"][0]
    ref = numpy_ece(eager_logits(samples, images), labels)
    assert entry["ece"] == pytest.approx(ref, abs=1e-6)
    assert entry["n"] == len(labels) and entry["definition"]["n_bins"] == 15


def test_state_dict_with_arch_and_pickled_module_with_trust(samples, test_split, tmp_path):
    images, labels = test_split
    sd = load_file(str(samples / "digits_hard.safetensors"))
    torch.save(sd, tmp_path / "hard_state.pt")
    common = ["--data", samples / "digits_test.npz", "--mean", "0.310071", "--std", "0.377343", "--json"]
    result = invoke("ece", tmp_path / "hard_state.pt", "--arch", "calibscope.models:DigitsCNN", *common)
    assert result.exit_code == 0, result.stderr
    ref = numpy_ece(eager_logits(samples, images), labels)
    assert json.loads(result.stdout)["results"][0]["ece"] == pytest.approx(ref, abs=1e-4)
    model = DigitsCNN()
    model.load_state_dict(sd)
    torch.save(model, tmp_path / "whole.pt")
    refused = invoke("ece", tmp_path / "whole.pt", *common)
    assert refused.exit_code == 2 and "--trust" in refused.stderr
    trusted = invoke("ece", tmp_path / "whole.pt", "--trust", *common)
    assert trusted.exit_code == 0, trusted.stderr


def test_side_by_side_table_and_outputs(samples, tmp_path):
    out = tmp_path / "out"
    result = invoke("ece", samples / "digits_hard.pt2", samples / "digits_ls.pt2", "--data",
                    samples / "digits_test.npz", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "digits_hard.pt2" in result.stdout and "digits_ls.pt2" in result.stdout and "ECE" in result.stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == ["ece.json", "reliability_digits_hard.pt2.png", "reliability_digits_hard.pt2.svg",
                     "reliability_digits_ls.pt2.png", "reliability_digits_ls.pt2.svg", "reliability_overlay.png",
                     "reliability_overlay.svg"]
    doc = json.loads((out / "ece.json").read_text())
    assert [r["name"] for r in doc["results"]] == ["digits_hard.pt2", "digits_ls.pt2"]


def test_single_model_prints_per_bin_table(samples):
    result = invoke("ece", samples / "digits_hard_test_logits.npz", "--bins", "10")
    assert result.exit_code == 0, result.stderr
    assert "0.90" in result.stdout and "1.00" in result.stdout  # the last bin's edges


def test_gate_exit_codes(samples):
    logits = samples / "digits_hard_test_logits.npz"
    failing = invoke("ece", logits, "--max-ece", "0.001")
    assert failing.exit_code == 1 and "--max-ece 0.001" in failing.stderr
    assert failing.stderr.count("\n") == 1
    passing = invoke("ece", logits, "--max-ece", "0.5", "--json")
    assert passing.exit_code == 0
    assert json.loads(passing.stdout)["gate"] == {"max_ece": 0.5, "passed": True, "failing": []}


def test_data_from_project_config(samples, tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.calibscope]\ndata = "{samples / "digits_test.npz"}"\nbins = 10\n')
    result = invoke("ece", samples / "digits_sam.pt2", "--json", cwd=tmp_path, monkeypatch=monkeypatch)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["results"][0]["n_bins"] == 10


def test_probabilities_file_is_detected_and_gives_the_same_ece(samples, tmp_path):
    d = np.load(samples / "digits_hard_test_logits.npz")
    probs = torch.from_numpy(d["logits"]).double().softmax(1).numpy()
    np.savez(tmp_path / "probs.npz", probs=probs, labels=d["labels"])
    np.savez(tmp_path / "probs_as_logits.npz", logits=probs, labels=d["labels"])
    ref = numpy_ece(d["logits"], d["labels"])
    for name in ("probs.npz", "probs_as_logits.npz"):
        result = invoke("ece", tmp_path / name, "--json")
        assert result.exit_code == 0, result.stderr
        entry = json.loads(result.stdout)["results"][0]
        assert entry["ece"] == pytest.approx(ref, abs=1e-6)
        assert entry["inference"]["from_probabilities"] is True


# ---------------------------------------------------------------- the bad-input matrix


class _Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def _bad_inputs(tmp: Path, samples: Path) -> dict[str, tuple[list, str]]:
    """name → (arguments after `ece`, a phrase the one-line message must contain)."""
    test = samples / "digits_test.npz"
    (tmp / "random.bin").write_bytes(bytes(range(256)) * 8)
    blob = (samples / "digits_hard.safetensors").read_bytes()
    (tmp / "cut.safetensors").write_bytes(blob[: len(blob) // 2])
    save_file({"weight": torch.zeros(3, 3)}, str(tmp / "wrong_keys.safetensors"))
    d = np.load(test)
    np.savez(tmp / "labels_12.npz", images=d["images"][:20], labels=np.arange(20) % 13)
    np.savez(tmp / "short_labels.npz", images=d["images"][:20], labels=d["labels"][:19])
    np.savez(tmp / "empty.npz", images=d["images"][:0], labels=d["labels"][:0])
    nan = np.zeros((6, 3), np.float32)
    nan[1, 2], nan[4, 0] = np.nan, np.inf
    np.savez(tmp / "nan_logits.npz", logits=nan, labels=np.zeros(6, np.int64))
    np.savez(tmp / "three_class.npz", logits=np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32),
             labels=np.arange(10))
    with open(tmp / "evil.pt", "wb") as fh:
        pickle.dump({"state": _Evil(tmp / "pwned")}, fh)
    torch.save({"x": _Evil(tmp / "pwned")}, tmp / "evil_zip.pt")
    return {
        "missing file": (["nope.pt2", "--data", test], "does not exist"),
        "unknown format": ([tmp / "random.bin", "--data", test], "not a checkpoint"),
        "truncated safetensors": ([tmp / "cut.safetensors", "--data", test], "truncated"),
        "arch/key mismatch": ([tmp / "wrong_keys.safetensors", "--arch", "calibscope.models:DigitsCNN",
                               "--data", test], "missing"),
        "labels out of range": ([samples / "digits_hard.pt2", "--data", tmp / "labels_12.npz"], "out of range"),
        "label count": ([samples / "digits_hard.pt2", "--data", tmp / "short_labels.npz"], "19"),
        "empty dataset": ([samples / "digits_hard.pt2", "--data", tmp / "empty.npz"], "empty"),
        "nan logits": ([tmp / "nan_logits.npz"], "2 logits are NaN or infinite"),
        "class count vs labels": ([tmp / "three_class.npz"], "3 classes"),
        "malicious pickle": ([tmp / "evil.pt", "--data", test], "--trust"),
        "malicious torch zip": ([tmp / "evil_zip.pt", "--data", test], "--trust"),
        "bad arch kwargs json": ([samples / "digits_hard.safetensors", "--arch-kwargs", "{oops", "--data", test],
                                 "JSON"),
        "bad device": ([samples / "digits_hard.pt2", "--data", test, "--device", "cuda:3"], "CUDA"),
    }


CASES = ["missing file", "unknown format", "truncated safetensors", "arch/key mismatch", "labels out of range",
         "label count", "empty dataset", "nan logits", "class count vs labels", "malicious pickle",
         "malicious torch zip", "bad arch kwargs json", "bad device"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, samples, tmp_path):
    args, phrase = _bad_inputs(tmp_path, samples)[case]
    out = tmp_path / "out"
    result = invoke("ece", *args, "--out", out)
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr.startswith("calibscope: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert phrase in result.stderr, result.stderr
    assert not out.exists(), "no output may be written for bad input"
    assert not (tmp_path / "pwned").exists(), "code from a file ran without --trust"


def test_usage_errors_are_exit_2(samples):
    assert invoke("ece", samples / "digits_hard.pt2", "--bins", "x").exit_code == 2
    assert invoke("ece", samples / "digits_hard.pt2", "--nope").exit_code == 2


def test_debug_shows_the_traceback(samples):
    result = runner.invoke(app, ["--debug", "ece", "nope.pt2"])
    assert result.exit_code != 0 and result.exception is not None


def test_malicious_pickle_real_process_stderr_is_one_line(samples, tmp_path):
    """Outside pytest's warning capture: what a user's terminal shows."""
    import subprocess
    import sys

    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"state": _Evil(tmp_path / "pwned")}, fh, protocol=4)
    proc = subprocess.run([sys.executable, "-m", "calibscope", "ece", str(tmp_path / "evil.pt"), "--data",
                           str(samples / "digits_test.npz")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--trust" in proc.stderr, proc.stderr
    assert not (tmp_path / "pwned").exists()
