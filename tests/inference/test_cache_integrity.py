"""The output cache never gives another number: a damaged or foreign entry is a miss (one warning), a cache
that cannot be written is skipped (one warning) — through the command line, with the ECE checked against a
run without any cache."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from calibscope.cli import app
from calibscope.inference import cache
from calibscope.inference.outputs import Outputs

SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"


def outputs(seed: int) -> Outputs:
    g = torch.Generator().manual_seed(seed)
    return Outputs(logits=torch.randn(50, 4, generator=g), labels=None, features=torch.randn(50, 3, generator=g),
                   meta={"precision": "fp32"})


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(cache, "_warned", set())


def test_flipped_bytes_are_a_miss(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIBSCOPE_CACHE_DIR", str(tmp_path))
    key = cache.cache_key(a=1)
    cache.store(key, outputs(0))
    assert torch.equal(cache.load_cached(key).logits, outputs(0).logits)
    path = tmp_path / f"{key}.safetensors"
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x40  # a bit of the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="does not match its digest"):
        assert cache.load_cached(key) is None
        assert cache.load_cached_logits_rows(key) is None


def test_another_entry_copied_in_is_a_miss(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIBSCOPE_CACHE_DIR", str(tmp_path))
    mine, theirs = cache.cache_key(a=1), cache.cache_key(a=2)
    cache.store(theirs, outputs(1))
    shutil.copy(tmp_path / f"{theirs}.safetensors", tmp_path / f"{mine}.safetensors")
    with pytest.warns(RuntimeWarning, match="another run's"):
        assert cache.load_cached(mine) is None
    assert cache.load_cached(theirs) is not None


def test_entry_without_digest_is_a_miss(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("CALIBSCOPE_CACHE_DIR", str(tmp_path))
    key = cache.cache_key(a=3)
    save_file({"logits": torch.zeros(3, 2)}, str(tmp_path / f"{key}.safetensors"), metadata={"meta": "{}"})
    with pytest.warns(RuntimeWarning):
        assert cache.load_cached(key) is None


def test_rows_reader_checks_the_digest_too(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIBSCOPE_CACHE_DIR", str(tmp_path))
    key = cache.cache_key(a=4)
    cache.store(key, outputs(2))
    logits, meta = cache.load_cached_logits_rows(key)
    assert torch.equal(logits.rows(0, 50), outputs(2).logits) and meta["cache"] == "hit"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_cache_is_skipped_with_one_warning(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    monkeypatch.setenv("CALIBSCOPE_CACHE_DIR", str(folder))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cache.store(cache.cache_key(a=5), outputs(0))
        cache.store(cache.cache_key(a=6), outputs(0))
    assert len([w for w in seen if "could not write the output cache" in str(w.message)]) == 1


def test_failing_cache_write_is_skipped_with_one_warning(tmp_path, monkeypatch):
    """A full disk: the write itself fails (simulated at the writer, which is what ENOSPC looks like here)."""
    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setenv("CALIBSCOPE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cache.store(cache.cache_key(a=7), outputs(0))
        cache.store(cache.cache_key(a=8), outputs(0))
    assert len([w for w in seen if "No space left" in str(w.message)]) == 1
    assert not list(tmp_path.iterdir())  # no temporary left behind


def _ece(args, env_cache: Path, monkeypatch) -> tuple[int, dict, str]:
    monkeypatch.setenv("CALIBSCOPE_CACHE_DIR", str(env_cache))
    result = CliRunner().invoke(app, ["ece", *args, "--json"])
    doc = json.loads(result.stdout) if result.exit_code == 0 else {}
    return result.exit_code, doc, result.stderr


def test_cli_tampered_entry_gives_the_uncached_numbers(tmp_path, monkeypatch):
    model = SAMPLES / "digits_hard.safetensors"
    other = SAMPLES / "digits_ls.safetensors"
    data = SAMPLES / "digits_test.npz"
    code, reference, _ = _ece([str(model), "--data", str(data), "--no-cache"], tmp_path / "unused", monkeypatch)
    assert code == 0
    cache_folder = tmp_path / "cache"
    assert _ece([str(model), "--data", str(data)], cache_folder, monkeypatch)[0] == 0
    (entry,) = list(cache_folder.glob("*.safetensors"))
    # another model's entry copied under this run's name
    for f in cache_folder.iterdir():
        f.unlink()
    assert _ece([str(other), "--data", str(data)], cache_folder, monkeypatch)[0] == 0
    (foreign,) = list(cache_folder.glob("*.safetensors"))
    shutil.copy(foreign, entry)
    code, doc, err = _ece([str(model), "--data", str(data)], cache_folder, monkeypatch)
    assert code == 0 and "does not match its digest" in err
    assert _metrics(doc) == _metrics(reference)


def _metrics(doc: dict) -> dict:
    found = {}

    def walk(o, path=""):
        if isinstance(o, dict):
            for k, v in o.items():
                if k in ("ece", "nll", "brier", "accuracy") and isinstance(v, (int, float)):
                    found[path + "/" + k] = v
                walk(v, path + "/" + k)
        elif isinstance(o, list):
            for i, v in enumerate(o):
                walk(v, f"{path}[{i}]")

    walk(doc)
    assert found, "no metrics found in the JSON document"
    return found
