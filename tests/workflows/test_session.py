"""The Session and the output cache: a hit loads no model, the key follows the file's bytes (not its name or
time stamp), the file-digest memo is used only when size, times and inode all match."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from calibscope.inference import cache
from calibscope.workflows import Session
from calibscope.workflows.session import CachedCheckpoint

SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"
TEST = SAMPLES / "digits_test.npz"


def _past(path: Path) -> None:
    """Modified a minute ago: out of the memo's two-second racy window."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 60 * 10**9))


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "model.safetensors"
    shutil.copyfile(SAMPLES / "digits_hard.safetensors", path)
    _past(path)
    return path


def test_a_cache_hit_loads_no_model(model, monkeypatch):
    first, ckpt = Session(TEST).outputs(model)
    assert first.meta["cache"] == "miss"

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded on a cache hit")

    monkeypatch.setattr("calibscope.loading.checkpoint.load_checkpoint", refuse)
    again, cached = Session(TEST).outputs(model)
    assert again.meta["cache"] == "hit" and isinstance(cached, CachedCheckpoint)
    assert torch.equal(again.logits, first.logits) and torch.equal(again.labels, first.labels)
    assert (cached.format, cached.sha256, cached.path) == (ckpt.format, ckpt.sha256, model)
    assert cached.metadata.get("mean") == ckpt.metadata.get("mean")
    assert again.meta["checkpoint_sha256"] == first.meta["checkpoint_sha256"] == ckpt.sha256
    # the streamed path (what `calibscope ece` uses) hits too
    shard, _ = Session(TEST).output_shard(model)
    assert torch.equal(shard.logits(), first.logits)


def test_other_bytes_under_the_same_name_size_and_time_are_a_miss(model):
    before, _ = Session(TEST).outputs(model)
    stamp = model.stat()
    other_path = model.parent / "other.safetensors"  # the same model with one weight changed: the same size
    with safe_open(str(model), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    name = max(tensors, key=lambda k: tensors[k].numel())
    tensors[name] = tensors[name] * 1.5
    save_file(tensors, str(other_path), metadata=metadata)
    other = other_path.read_bytes()
    assert len(other) == stamp.st_size
    with open(model, "r+b") as f:  # in place: same inode
        f.write(other)
    os.utime(model, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # and the old modification time
    after, ckpt = Session(TEST).outputs(model)
    assert after.meta["cache"] == "miss" and not torch.equal(after.logits, before.logits)
    fresh, _ = Session(TEST, use_cache=False).outputs(other_path)
    assert torch.equal(after.logits, fresh.logits)


def test_the_key_holds_how_the_model_is_built(model):
    plain = Session(TEST).model_key(model)
    assert plain["file_sha256"] == Session(TEST).model_key(SAMPLES / "digits_hard.safetensors")["file_sha256"]
    assert Session(TEST, arch="calibscope.models:DigitsCNN").model_key(model) != plain
    assert Session(TEST, arch_kwargs={"num_classes": 10}).model_key(model) != plain


def test_digests_are_memoised_on_disk(model, monkeypatch):
    digest = cache.file_digest(model)
    assert (cache.cache_dir() / cache.DIGESTS_FILE).is_file()
    cache._digests.clear()  # a new process: only the file on disk remembers

    def refuse(*args, **kwargs):
        raise AssertionError("hashed again")

    monkeypatch.setattr("calibscope.loading.files.file_sha256", refuse)
    assert cache.file_digest(model) == digest


def test_a_just_written_file_is_not_memoised(tmp_path):
    path = tmp_path / "fresh.bin"
    path.write_bytes(b"x" * 100)
    cache.file_digest(path)
    assert str(path.resolve()) not in cache._digests
