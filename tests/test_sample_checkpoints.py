"""The shipped sample data and checkpoints (built by scripts/export_digits.py and make_sample_checkpoints.py).

Checked with plain torch / numpy / safetensors APIs only, independently of calibscope's loaders.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from calibscope.models import DigitsCNN

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"
MODEL_NAMES = ("digits_hard", "digits_ls", "digits_sam")
DATA_FILES = ("digits.npz", "digits_train.npz", "digits_val.npz", "digits_test.npz", "digits_hard_test_logits.npz")
MODEL_FILES = tuple(f"{n}.{ext}" for n in MODEL_NAMES for ext in ("pt2", "ts", "safetensors"))
META_KEYS = {"arch", "arch_kwargs", "mean", "std", "class_names", "num_classes", "training"}
CLASS_NAMES = [str(c) for c in range(10)]


def _npz(name: str) -> dict[str, np.ndarray]:
    with np.load(SAMPLES / name) as data:  # allow_pickle=False by default: plain arrays only
        return {k: data[k] for k in data.files}


def _rows(split: dict[str, np.ndarray]) -> list[bytes]:
    """One byte string per example: its 64 pixels and its label."""
    images = split["images"].reshape(len(split["images"]), -1)
    return [img.tobytes() + int(lab).to_bytes(1, "little") for img, lab in zip(images, split["labels"], strict=True)]


@pytest.mark.parametrize("name", DATA_FILES + MODEL_FILES + ("README.md",))
def test_file_exists_and_is_under_2_mb(name: str) -> None:
    path = SAMPLES / name
    assert path.is_file(), f"missing {path}; run scripts/make_sample_checkpoints.py"
    assert path.stat().st_size < 2 * 1024 * 1024


def test_digits_has_1797_examples_in_10_classes() -> None:
    digits = _npz("digits.npz")
    assert digits["images"].shape == (1797, 1, 8, 8) and digits["images"].dtype == np.uint8
    assert digits["labels"].shape == (1797,) and digits["labels"].dtype == np.int64
    assert sorted(np.unique(digits["labels"]).tolist()) == list(range(10))
    assert digits["class_names"].tolist() == CLASS_NAMES
    # 0..16 scaled by 255/16 and rounded: only 17 distinct grey levels, 0 and 255 among them.
    levels = np.unique(digits["images"])
    assert levels.tolist() == np.round(np.arange(17) * 255 / 16).astype(int).tolist()


def test_splits_are_disjoint_and_cover_the_digits() -> None:
    digits = _npz("digits.npz")
    splits = {s: _npz(f"digits_{s}.npz") for s in ("train", "val", "test")}
    assert {s: len(d["labels"]) for s, d in splits.items()} == {"train": 150, "val": 300, "test": 1347}
    assert np.bincount(splits["train"]["labels"], minlength=10).tolist() == [15] * 10
    for split in splits.values():
        assert split["images"].dtype == np.uint8 and split["labels"].dtype == np.int64
        assert split["class_names"].tolist() == CLASS_NAMES

    all_rows = _rows(digits)
    assert len(set(all_rows)) == len(all_rows), "digits.npz has duplicate examples; compare as multisets"
    rows = {s: set(_rows(d)) for s, d in splits.items()}
    assert not rows["train"] & rows["val"]
    assert not rows["train"] & rows["test"]
    assert not rows["val"] & rows["test"]
    assert rows["train"] | rows["val"] | rows["test"] == set(all_rows)


def _load_three_formats(name: str) -> tuple[dict[str, torch.nn.Module], dict[str, dict]]:
    modules: dict[str, torch.nn.Module] = {}
    metas: dict[str, dict] = {}

    extra = {"calibscope.json": ""}
    modules["export"] = torch.export.load(SAMPLES / f"{name}.pt2", extra_files=extra).module()
    metas["export"] = json.loads(extra["calibscope.json"])

    extra = {"calibscope.json": ""}
    modules["torchscript"] = torch.jit.load(str(SAMPLES / f"{name}.ts"), _extra_files=extra).eval()
    metas["torchscript"] = json.loads(extra["calibscope.json"])

    path = str(SAMPLES / f"{name}.safetensors")
    with safe_open(path, framework="pt") as f:
        raw = f.metadata()
    assert raw["calibscope.arch"] == "calibscope.models:DigitsCNN"
    metas["safetensors"] = {
        "arch": raw["calibscope.arch"],
        "num_classes": int(raw["calibscope.num_classes"]),
        **{k: json.loads(raw[f"calibscope.{k}"]) for k in ("arch_kwargs", "mean", "std", "class_names", "training")},
    }
    model = DigitsCNN(**metas["safetensors"]["arch_kwargs"])
    model.load_state_dict(load_file(path), strict=True)
    modules["safetensors"] = model.eval()
    return modules, metas


@pytest.fixture(scope="module")
def test_split() -> dict[str, np.ndarray]:
    return _npz("digits_test.npz")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_three_formats_agree_and_carry_metadata(name: str, test_split: dict[str, np.ndarray]) -> None:
    modules, metas = _load_three_formats(name)

    for meta in metas.values():
        assert META_KEYS <= set(meta)
        assert meta == metas["safetensors"]
    meta = metas["safetensors"]
    assert meta["arch"] == "calibscope.models:DigitsCNN"
    assert meta["num_classes"] == 10 and meta["class_names"] == CLASS_NAMES
    assert {"loss", "alpha", "rho", "epochs", "optimiser", "lr", "seed", "n_train"} <= set(meta["training"])
    assert meta["training"]["n_train"] == 150

    # The normalisation statistics are those of the training split's [0, 1] pixels.
    train_pixels = _npz("digits_train.npz")["images"].astype(np.float64) / 255.0
    assert meta["mean"] == pytest.approx([train_pixels.mean()], abs=1e-12)
    assert meta["std"] == pytest.approx([train_pixels.std()], abs=1e-12)

    # uint8 → /255 → (x − mean) / std in float32, as calibscope's engine feeds the models.
    x = torch.from_numpy(test_split["images"]).to(torch.float32) / 255.0
    x = (x - torch.tensor(meta["mean"]).view(1, -1, 1, 1)) / torch.tensor(meta["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        logits = {fmt: module(x) for fmt, module in modules.items()}
    reference = logits["safetensors"]
    assert reference.shape == (1347, 10) and reference.dtype == torch.float32
    for fmt in ("export", "torchscript"):
        torch.testing.assert_close(logits[fmt], reference, rtol=0, atol=1e-5, msg=f"{name}: {fmt} differs")
    # A trained model, not a random one.
    accuracy = (reference.argmax(1).numpy() == test_split["labels"]).mean()
    assert accuracy > 0.8

    if name == "digits_hard":
        saved = _npz("digits_hard_test_logits.npz")
        assert saved["logits"].dtype == np.float32 and saved["labels"].dtype == np.int64
        assert saved["class_names"].tolist() == CLASS_NAMES
        np.testing.assert_array_equal(saved["labels"], test_split["labels"])
        np.testing.assert_allclose(saved["logits"], reference.numpy(), rtol=0, atol=1e-5)


SERIES_EPOCHS = (2, 10, 50, 200)


def test_checkpoint_series_is_small_float16_and_labelled_with_its_epoch() -> None:
    paths = [SAMPLES / "series" / f"digits_{run}_epoch_{e}.safetensors" for run in ("hard", "ls")
             for e in SERIES_EPOCHS]
    assert sum(p.stat().st_size for p in paths) <= 3_000_000
    for path in paths:
        with safe_open(str(path), framework="pt") as f:
            training = json.loads(f.metadata()["calibscope.training"])
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
        assert training["epochs"] == int(path.stem.rsplit("_", 1)[1]) and training["stored_dtype"] == "float16"
        model = DigitsCNN(**json.loads(safe_open(str(path), framework="pt").metadata()["calibscope.arch_kwargs"]))
        model.load_state_dict({k: v.float() for k, v in load_file(path).items()})
