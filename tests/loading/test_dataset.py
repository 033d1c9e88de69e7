"""load_dataset: every format built in tmp_path and checked against the values written."""

from __future__ import annotations

import gzip
import json
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from calibscope.errors import InputError
from calibscope.loading.dataset import load_dataset
from calibscope.loading.safe_pickle import safe_load

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------------------ tensor files


def test_npz_x_y(tmp_path: Path) -> None:
    x = RNG.normal(size=(20, 8)).astype(np.float64)
    y = RNG.integers(0, 3, size=20)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_dataset(tmp_path / "d.npz")
    assert ds.format == "npz" and len(ds) == 20
    assert ds.inputs.dtype == torch.float32 and ds.labels.dtype == torch.int64
    np.testing.assert_allclose(ds.inputs.numpy(), x.astype(np.float32))
    np.testing.assert_array_equal(ds.labels.numpy(), y)
    assert ds.class_names is None and not ds.is_image


def test_npz_images_labels_uint8_class_names_and_channel_last(tmp_path: Path) -> None:
    images = RNG.integers(0, 256, size=(6, 16, 12, 3), dtype=np.uint8)  # NHWC
    labels = np.array([0, 1, 2, 0, 1, 2], dtype=np.int32)
    np.savez(tmp_path / "d.npz", images=images, labels=labels, class_names=np.array(["a", "b", "c"]))
    ds = load_dataset(tmp_path / "d.npz")
    assert ds.inputs.dtype == torch.uint8 and tuple(ds.inputs.shape) == (6, 3, 16, 12)
    np.testing.assert_array_equal(ds.inputs.numpy(), images.transpose(0, 3, 1, 2))
    assert ds.class_names == ("a", "b", "c") and ds.is_image
    assert ds.metadata["layout"] == "NHWC→NCHW"


def test_nchw_and_ambiguous_layouts_are_not_transposed(tmp_path: Path) -> None:
    nchw = RNG.integers(0, 256, size=(2, 3, 8, 8), dtype=np.uint8)
    ambiguous = RNG.normal(size=(2, 3, 8, 3)).astype(np.float32)  # dim 1 is 3: leave it
    np.savez(tmp_path / "a.npz", x=nchw)
    np.savez(tmp_path / "b.npz", x=ambiguous)
    np.testing.assert_array_equal(load_dataset(tmp_path / "a.npz").inputs.numpy(), nchw)
    assert tuple(load_dataset(tmp_path / "b.npz").inputs.shape) == (2, 3, 8, 3)


def test_gray_nhw_uint8_gets_channel_dim_and_labels_optional(tmp_path: Path) -> None:
    images = RNG.integers(0, 256, size=(4, 10, 10), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", inputs=images)
    ds = load_dataset(tmp_path / "d.npz")
    assert tuple(ds.inputs.shape) == (4, 1, 10, 10) and ds.labels is None
    np.testing.assert_array_equal(ds.inputs.numpy()[:, 0], images)


def test_uint8_features_that_are_not_images_become_float32(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.array([[0, 255], [7, 8]], dtype=np.uint8))
    ds = load_dataset(tmp_path / "d.npz")
    assert ds.inputs.dtype == torch.float32 and ds.inputs.tolist() == [[0.0, 255.0], [7.0, 8.0]]


def test_legacy_torch_file(tmp_path: Path) -> None:
    torch.save({"x": torch.ones(3, 2), "y": torch.tensor([1, 0, 1])}, tmp_path / "old.pt",
               _use_new_zipfile_serialization=False)
    ds = load_dataset(tmp_path / "old.pt")
    assert ds.format == "pt" and ds.labels.tolist() == [1, 0, 1] and ds.inputs.tolist() == [[1.0, 1.0]] * 3


def test_integral_float_labels_accepted(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", data=np.zeros((3, 2)), labels=np.array([0.0, 2.0, 1.0]))
    np.testing.assert_array_equal(load_dataset(tmp_path / "d.npz").labels.numpy(), [0, 2, 1])


def test_pt_dict_with_class_names(tmp_path: Path) -> None:
    x = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    torch.save({"inputs": x, "targets": y, "class_names": ["neg", "pos"]}, tmp_path / "d.pt")
    ds = load_dataset(tmp_path / "d.pt")
    assert ds.format == "pt" and ds.inputs.dtype == torch.float32
    torch.testing.assert_close(ds.inputs, x.float())
    assert ds.labels.tolist() == y.tolist() and ds.class_names == ("neg", "pos")


def test_pt_tuple(tmp_path: Path) -> None:
    x = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    torch.save((x, torch.tensor([7, 2, 1])), tmp_path / "test.pt")  # torchvision's old MNIST processed file
    ds = load_dataset(tmp_path / "test.pt")
    assert tuple(ds.inputs.shape) == (3, 1, 28, 28) and ds.labels.tolist() == [7, 2, 1]


def test_pt_holding_code_is_refused(tmp_path: Path) -> None:
    torch.save({"x": torch.zeros(2, 2), "model": torch.nn.Linear(2, 2)}, tmp_path / "m.pt")
    with pytest.raises(InputError, match="save plain tensors"):
        load_dataset(tmp_path / "m.pt")


def test_safetensors_with_class_names(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    x = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8)
    y = torch.tensor([3, 0, 1, 2])
    save_file({"x": x, "y": y}, str(tmp_path / "d.safetensors"),
              metadata={"class_names": json.dumps(["w", "x", "y", "z"])})
    ds = load_dataset(tmp_path / "d.safetensors")
    assert ds.format == "safetensors" and ds.inputs.dtype == torch.uint8
    assert torch.equal(ds.inputs, x) and ds.labels.tolist() == [3, 0, 1, 2]
    assert ds.class_names == ("w", "x", "y", "z")


def test_split_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x_train=np.zeros((5, 2)), y_train=np.zeros(5, dtype=int),
             x_test=np.ones((3, 2)), y_test=np.ones(3, dtype=int))
    default = load_dataset(tmp_path / "d.npz")  # only split-named keys (Keras' mnist.npz): test
    assert len(default) == 3 and default.metadata["split"] == "test"
    train = load_dataset(tmp_path / "d.npz", split="train")
    assert len(train) == 5 and train.labels.tolist() == [0] * 5
    assert train.sha256 != default.sha256
    with pytest.raises(InputError, match="no 'val' split"):
        load_dataset(tmp_path / "d.npz", split="val")


def test_split_prefixed_keys_win_when_split_given(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 2)), y=np.zeros(5, dtype=int),
             test_x=np.ones((2, 2)), test_y=np.ones(2, dtype=int))
    assert len(load_dataset(tmp_path / "d.npz")) == 5
    assert len(load_dataset(tmp_path / "d.npz", split="test")) == 2


def test_split_on_single_split_file_is_an_error(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 2)), y=np.zeros(5, dtype=int))
    with pytest.raises(InputError, match="no 'test' split"):
        load_dataset(tmp_path / "d.npz", split="test")


def test_limit_and_hash(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.arange(20.0).reshape(10, 2), y=np.arange(10))
    full = load_dataset(tmp_path / "d.npz")
    part = load_dataset(tmp_path / "d.npz", limit=4)
    assert part.labels.tolist() == [0, 1, 2, 3] and part.inputs[3].tolist() == [6.0, 7.0]
    assert part.sha256 != full.sha256 and part.metadata["limit"] == 4
    assert load_dataset(tmp_path / "d.npz", limit=4).sha256 == part.sha256
    assert load_dataset(tmp_path / "d.npz", limit=100).sha256 == full.sha256  # same selection, same hash
    for bad in (0, -1):
        with pytest.raises(InputError, match="larger than 0"):
            load_dataset(tmp_path / "d.npz", limit=bad)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((0, 3)), "y": np.zeros(0, dtype=int)}, "holds 0 examples"),
        ({"x": np.zeros((1797, 3)), "y": np.zeros(1796, dtype=int)}, "'.*d.npz': 1797 examples but 1796 labels"),
        ({"logits": np.zeros((2, 3)), "labels": np.zeros(2, dtype=int)}, "keys: logits, labels.*expected one of x"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, -1, 2])}, "≥ 0, but label 1 is -1"),
        ({"x": np.zeros((3, 2)), "y": np.array([0.0, 1.5, 2.0])}, "whole class indices, but label 1 is 1.5"),
        ({"x": np.zeros((3, 2)), "y": np.array([0.0, np.nan, 2.0])}, "whole class indices"),
        ({"x": np.zeros((2, 2)), "y": np.array([0, 5]), "class_names": np.array(["a", "b"])},
         "labels go up to 5 but class_names has 2"),
    ],
)
def test_tensor_file_errors(tmp_path: Path, arrays: dict, message: str) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(InputError, match=message):
        load_dataset(tmp_path / "d.npz")


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
def test_missing_file_and_model_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(tmp_path / "nope.npz")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "m.pt"))
    with pytest.raises(InputError, match="is a model"):
        load_dataset(tmp_path / "m.pt")


# ------------------------------------------------------------------------------------------------ image folder


def _png(path: Path, array: np.ndarray, mode: str) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=None if mode == "RGB" else mode).save(path)


def test_image_folder_rgb(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    pixels = {}
    for cls, names in (("dog", ["b.png", "a.png"]), ("cat", ["z.bmp"])):
        for name in names:
            a = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
            _png(root / cls / name, a, "RGB")
            pixels[f"{cls}/{name}"] = a
    (root / "dog" / "notes.txt").write_text("not an image")
    ds = load_dataset(root)
    assert ds.format == "image-folder" and ds.class_names == ("cat", "dog")
    assert ds.inputs.dtype == torch.uint8 and tuple(ds.inputs.shape) == (3, 3, 5, 7)
    assert ds.labels.tolist() == [0, 1, 1]  # cat/z.bmp, dog/a.png, dog/b.png
    for i, key in enumerate(["cat/z.bmp", "dog/a.png", "dog/b.png"]):
        np.testing.assert_array_equal(ds.inputs[i].numpy(), pixels[key].transpose(2, 0, 1))
    part = load_dataset(root, limit=2)
    assert part.labels.tolist() == [0, 1] and part.metadata["num_examples_in_source"] == 3
    assert part.sha256 != ds.sha256 and part.class_names == ("cat", "dog")


def test_image_folder_grayscale_stays_one_channel(tmp_path: Path) -> None:
    a = RNG.integers(0, 256, size=(6, 6), dtype=np.uint8)
    _png(tmp_path / "g" / "zero" / "0.png", a, "L")
    _png(tmp_path / "g" / "one" / "1.png", a[::-1].copy(), "L")
    ds = load_dataset(tmp_path / "g")
    assert tuple(ds.inputs.shape) == (2, 1, 6, 6)
    np.testing.assert_array_equal(ds.inputs[1, 0].numpy(), a)  # 'zero' sorts after 'one'


def test_image_folder_mixed_modes_become_rgb(tmp_path: Path) -> None:
    gray = RNG.integers(0, 256, size=(4, 4), dtype=np.uint8)
    _png(tmp_path / "m" / "a" / "0.png", gray, "L")
    _png(tmp_path / "m" / "b" / "1.png", RNG.integers(0, 256, size=(4, 4, 3), dtype=np.uint8), "RGB")
    ds = load_dataset(tmp_path / "m")
    assert tuple(ds.inputs.shape) == (2, 3, 4, 4)
    np.testing.assert_array_equal(ds.inputs[0].numpy(), np.stack([gray] * 3))


def test_image_folder_sizes_must_match(tmp_path: Path) -> None:
    _png(tmp_path / "s" / "a" / "0.png", np.zeros((4, 4), np.uint8), "L")
    _png(tmp_path / "s" / "b" / "1.png", np.zeros((4, 6), np.uint8), "L")
    with pytest.raises(InputError, match=r"1\.png' is 6×4 but .*0\.png' is 4×4"):
        load_dataset(tmp_path / "s")


def test_image_folder_splits(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            _png(tmp_path / "r" / split / "c" / f"{i}.png", np.full((4, 4), i, np.uint8), "L")
    assert len(load_dataset(tmp_path / "r", split="train")) == 3
    default = load_dataset(tmp_path / "r")
    assert len(default) == 2 and default.metadata["split"] == "test" and default.class_names == ("c",)
    with pytest.raises(InputError, match="no 'val' folder"):
        load_dataset(tmp_path / "r", split="val")


def test_empty_and_unreadable_folders(tmp_path: Path) -> None:
    (tmp_path / "e" / "cls").mkdir(parents=True)
    with pytest.raises(InputError, match="holds 0 examples"):
        load_dataset(tmp_path / "e")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="not a dataset folder"):
        load_dataset(tmp_path / "flat")
    (tmp_path / "bad" / "c").mkdir(parents=True)
    (tmp_path / "bad" / "c" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match="broken.png' is not a readable image"):
        load_dataset(tmp_path / "bad")


# ------------------------------------------------------------------------------------------------ CIFAR


def _cifar_rows(n: int) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _dump(path: Path, obj: object, protocol: int = 2) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def test_cifar10_batch_file_and_meta(tmp_path: Path) -> None:
    rows = _cifar_rows(4)
    _dump(tmp_path / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"data": rows,
                                    b"labels": [3, 1, 4, 1], b"filenames": [b"a.png"] * 4})
    _dump(tmp_path / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)],
                                      b"num_cases_per_batch": 10000})
    ds = load_dataset(tmp_path / "test_batch")
    assert ds.format == "cifar10" and ds.metadata["split"] == "test"
    assert ds.inputs.dtype == torch.uint8 and tuple(ds.inputs.shape) == (4, 3, 32, 32)
    # row layout: 1024 red values, 1024 green, 1024 blue, each 32×32 row-major
    assert ds.inputs[0, 0, 0, 0].item() == rows[0, 0]
    assert ds.inputs[0, 1, 0, 0].item() == rows[0, 1024]
    assert ds.inputs[0, 2, 0, 0].item() == rows[0, 2048]
    assert ds.inputs[0, 0, 1, 0].item() == rows[0, 32]
    np.testing.assert_array_equal(ds.inputs.reshape(4, -1).numpy(), rows)
    assert ds.labels.tolist() == [3, 1, 4, 1]
    assert ds.class_names == tuple(f"c{i}" for i in range(10))
    with pytest.raises(InputError, match="is the 'test' split, not 'train'"):
        load_dataset(tmp_path / "test_batch", split="train")
    with pytest.raises(InputError, match="holds CIFAR class names"):
        load_dataset(tmp_path / "batches.meta")


def test_cifar10_folder_splits(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train_rows = []
    for i in range(1, 6):
        rows = _cifar_rows(2)
        train_rows.append(rows)
        _dump(folder / f"data_batch_{i}", {b"data": rows, b"labels": [i, i]}, protocol=4)
    test_rows = _cifar_rows(3)
    _dump(folder / "test_batch", {b"data": test_rows, b"labels": [0, 1, 2]}, protocol=5)
    default = load_dataset(tmp_path)  # the parent of cifar-10-batches-py works too
    assert default.metadata["split"] == "test" and default.labels.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(default.inputs.reshape(3, -1).numpy(), test_rows)
    train = load_dataset(folder, split="train", limit=7)
    assert train.labels.tolist() == [1, 1, 2, 2, 3, 3, 4]
    np.testing.assert_array_equal(train.inputs.reshape(7, -1).numpy(), np.concatenate(train_rows)[:7])
    assert train.class_names is None
    with pytest.raises(InputError, match="not 'val'"):
        load_dataset(folder, split="val")


def test_cifar100_test_file_with_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rows = _cifar_rows(3)
    _dump(folder / "test", {b"filenames": [b"x"] * 3, b"batch_label": b"testing batch 1 of 1",
                            b"fine_labels": [99, 0, 42], b"coarse_labels": [19, 0, 1], b"data": rows})
    _dump(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                            b"coarse_label_names": [b"c"] * 20})
    for ds in (load_dataset(folder / "test"), load_dataset(folder)):
        assert ds.format == "cifar100" and ds.labels.tolist() == [99, 0, 42]
        assert ds.class_names[99] == "f99" and len(ds.class_names) == 100
        np.testing.assert_array_equal(ds.inputs.reshape(3, -1).numpy(), rows)
    with pytest.raises(InputError, match="lacks train"):
        load_dataset(folder, split="train")


def test_numpy1_pickle_names_are_resolved(tmp_path: Path) -> None:
    """Real CIFAR files name numpy.core.multiarray (numpy 1.x); numpy 2 moved it to numpy._core."""
    rows = _cifar_rows(2)
    raw = pickle.dumps({b"data": rows, b"labels": [5, 6]}, protocol=2)
    raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw
    (tmp_path / "data_batch_1").write_bytes(raw)
    ds = load_dataset(tmp_path / "data_batch_1")
    assert ds.metadata["split"] == "train" and ds.labels.tolist() == [5, 6]
    np.testing.assert_array_equal(ds.inputs.reshape(2, -1).numpy(), rows)


class _Evil:
    def __init__(self, target: Path, how: str) -> None:
        self.target, self.how = target, how

    def __reduce__(self):
        import os

        if self.how == "system":
            return (os.system, (f"touch '{self.target}'",))
        if self.how == "exec":
            return (exec, (f"open({str(self.target)!r}, 'w').close()",))
        return (Path.touch, (self.target,))


@pytest.mark.parametrize("how", ["system", "exec", "method"])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, how: str) -> None:
    target = tmp_path / "pwned"
    _dump(tmp_path / "test_batch", {b"data": _cifar_rows(1), b"labels": [0], b"x": _Evil(target, how)})
    with pytest.raises(InputError, match="contains a pickled reference to .*, which calibscope never loads"):
        load_dataset(tmp_path / "test_batch")
    with pytest.raises(InputError, match="never loads"):
        safe_load(tmp_path / "test_batch")
    assert not target.exists()


def test_codecs_encode_only_latin1(tmp_path: Path) -> None:
    # a GLOBAL _codecs.encode called with another codec is refused
    payload = b"\x80\x02c_codecs\nencode\nq\x00X\x03\x00\x00\x00abcq\x01X\x05\x00\x00\x00rot13q\x02\x86q\x03Rq\x04."
    (tmp_path / "p").write_bytes(payload)
    with pytest.raises(InputError, match="not a readable pickle.*encoding 'rot13'"):
        safe_load(tmp_path / "p")
    (tmp_path / "p").write_bytes(payload.replace(b"\x05\x00\x00\x00rot13", b"\x06\x00\x00\x00latin1"))
    assert safe_load(tmp_path / "p") == b"abc"


class _Python2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes str and bytes as Python 2 ``str`` (BINSTRING), as the CIFAR files were written."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: str | bytes) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def test_python2_cifar_pickle(tmp_path: Path) -> None:
    import io

    rows = _cifar_rows(3)
    buf = io.BytesIO()
    _Python2Pickler(buf, protocol=2).dump({"data": rows, "labels": [2, 0, 9], "batch_label": "testing batch 1"})
    raw = buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    opcodes = {op.name for op, _, _ in pickletools.genops(raw)}
    assert "SHORT_BINSTRING" in opcodes and "BINUNICODE" not in opcodes and b"_codecs" not in raw
    (tmp_path / "test_batch").write_bytes(raw)
    buf = io.BytesIO()
    _Python2Pickler(buf, protocol=2).dump({"label_names": [f"n{i}" for i in range(10)], "num_vis": 3072})
    (tmp_path / "batches.meta").write_bytes(buf.getvalue())
    ds = load_dataset(tmp_path)
    np.testing.assert_array_equal(ds.inputs.reshape(3, -1).numpy(), rows)
    assert ds.labels.tolist() == [2, 0, 9] and ds.class_names[9] == "n9"


def test_truncated_pickle(tmp_path: Path) -> None:
    raw = pickle.dumps({b"data": _cifar_rows(2), b"labels": [1, 2]}, protocol=2)
    (tmp_path / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="not a readable pickle"):
        load_dataset(tmp_path / "test_batch")


# ------------------------------------------------------------------------------------------------ MNIST IDX


def _idx(dims: tuple[int, ...], data: bytes, code: int = 0x08) -> bytes:
    return struct.pack(">BBBB", 0, 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + data


def _mnist(folder: Path, prefix: str, n: int, *, gz: bool) -> tuple[np.ndarray, np.ndarray]:
    images = RNG.integers(0, 256, size=(n, 5, 4), dtype=np.uint8)
    labels = RNG.integers(0, 10, size=n, dtype=np.uint8)
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    folder.mkdir(parents=True, exist_ok=True)
    with opener(folder / f"{prefix}-images-idx3-ubyte{suffix}", "wb") as fh:
        fh.write(_idx((n, 5, 4), images.tobytes()))
    with opener(folder / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as fh:
        fh.write(_idx((n,), labels.tobytes()))
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_file(tmp_path: Path, gz: bool) -> None:
    images, labels = _mnist(tmp_path, "t10k", 6, gz=gz)
    ds = load_dataset(tmp_path / f"t10k-images-idx3-ubyte{'.gz' if gz else ''}")
    assert ds.format == "mnist-idx" and ds.metadata["split"] == "test"
    assert ds.inputs.dtype == torch.uint8 and tuple(ds.inputs.shape) == (6, 1, 5, 4)
    np.testing.assert_array_equal(ds.inputs[:, 0].numpy(), images)
    np.testing.assert_array_equal(ds.labels.numpy(), labels)


def test_mnist_folder_splits(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"  # torchvision's layout
    test_images, _ = _mnist(raw, "t10k", 3, gz=False)
    train_images, train_labels = _mnist(raw, "train", 5, gz=True)
    assert len(load_dataset(tmp_path)) == 3
    train = load_dataset(tmp_path, split="train", limit=4)
    np.testing.assert_array_equal(train.inputs[:, 0].numpy(), train_images[:4])
    np.testing.assert_array_equal(train.labels.numpy(), train_labels[:4])


def test_mnist_errors(tmp_path: Path) -> None:
    full = _idx((3, 5, 4), bytes(60))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(full[:-7])
    with pytest.raises(InputError, match="truncated: the header describes 3×5×4 values"):
        load_dataset(tmp_path / "t10k-images-idx3-ubyte")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(full)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx((2,), bytes(2)))
    with pytest.raises(InputError, match="3 examples but 2 labels"):
        load_dataset(tmp_path / "t10k-images-idx3-ubyte")
    with pytest.raises(InputError, match="is an IDX labels file"):
        load_dataset(tmp_path / "t10k-labels-idx1-ubyte")
    with gzip.open(tmp_path / "x.gz", "wb") as fh:
        fh.write(b"a,b\n1,2\n")
    with pytest.raises(InputError, match="gzip-compressed but not an MNIST IDX"):
        load_dataset(tmp_path / "x.gz")


# ------------------------------------------------------------------------------------------------ CSV


def test_csv_numeric_labels(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("f1,Label,f2\n0.5,1,2\n-1e3,0, 3.25\n")
    ds = load_dataset(tmp_path / "d.csv")
    assert ds.format == "csv" and ds.inputs.dtype == torch.float32
    assert ds.inputs.tolist() == [[0.5, 2.0], [-1000.0, 3.25]] and ds.labels.tolist() == [1, 0]
    assert ds.class_names is None and ds.metadata["label_column"] == "Label"


def test_csv_string_labels_and_label_column(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,b,species\n1,2,virginica\n3,4,setosa\n5,6,virginica\n")
    ds = load_dataset(tmp_path / "d.csv", label_column="species")
    assert ds.class_names == ("setosa", "virginica") and ds.labels.tolist() == [1, 0, 1]
    part = load_dataset(tmp_path / "d.csv", label_column="species", limit=2)
    assert part.inputs.tolist() == [[1, 2], [3, 4]] and part.metadata["num_examples_in_source"] == 3
    assert part.sha256 != ds.sha256 and part.class_names == ("setosa", "virginica")
    assert load_dataset(tmp_path / "d.csv", label_column="species", limit=3).sha256 == ds.sha256
    first = load_dataset(tmp_path / "d.csv", label_column="species", limit=1)  # names come from every row
    assert first.labels.tolist() == [1] and first.class_names == ("setosa", "virginica")
    with pytest.raises(InputError, match=r"row 1 \(line 2\), column 'species': 'virginica' is not a number"):
        load_dataset(tmp_path / "d.csv", label_column="b")
    (tmp_path / "t.tsv").write_text("A\tB\tlabel\n1\t2\t0\n3\t4\t1\n")
    other = load_dataset(tmp_path / "t.tsv", label_column="a")  # case-insensitive when unambiguous
    assert other.labels.tolist() == [1, 3] and other.inputs.tolist() == [[2, 0], [4, 1]]


def test_csv_errors(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(InputError, match=r"no label column \(columns: a, b, c\); name it with --label-column"):
        load_dataset(tmp_path / "d.csv")
    with pytest.raises(InputError, match="no column 'z'"):
        load_dataset(tmp_path / "d.csv", label_column="z")
    (tmp_path / "e.csv").write_text("x,label\n1,0\n2,1\nhello,0\n")
    with pytest.raises(InputError, match=r"row 3 \(line 4\), column 'x': 'hello' is not a number"):
        load_dataset(tmp_path / "e.csv")
    (tmp_path / "f.csv").write_text("x,label\n")
    with pytest.raises(InputError, match="0 examples"):
        load_dataset(tmp_path / "f.csv")
    (tmp_path / "g.csv").write_text("x,label\n1,0\n2\n")
    with pytest.raises(InputError, match="line 3 has 1 cells"):
        load_dataset(tmp_path / "g.csv")
    (tmp_path / "h.csv").write_text("x,label\n1,-2\n")
    with pytest.raises(InputError, match="≥ 0"):
        load_dataset(tmp_path / "h.csv")
    with pytest.raises(InputError, match="holds a single split"):
        load_dataset(tmp_path / "d.csv", split="test", label_column="a")
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 2)))
    with pytest.raises(InputError, match="--label-column applies to CSV"):
        load_dataset(tmp_path / "d.npz", label_column="y")


def test_csv_written_by_pandas_with_its_index_drops_the_index(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    y = rng.integers(0, 3, 30)
    frame = pd.DataFrame(x, columns=list("abcd")).assign(label=y)
    frame.to_csv(tmp_path / "indexed.csv")  # pandas writes the row index first, under an empty header
    with pytest.warns(UserWarning, match="row index such as pandas' to_csv"):
        ds = load_dataset(tmp_path / "indexed.csv")
    np.testing.assert_array_equal(ds.inputs.numpy(), x)  # the 4 features, not the index as a 5th
    np.testing.assert_array_equal(ds.labels.numpy(), y)
    frame.to_csv(tmp_path / "plain.csv", index=False)
    np.testing.assert_array_equal(load_dataset(tmp_path / "plain.csv").inputs.numpy(), x)
    frame.set_axis([f"r{i}" for i in range(30)]).rename(index=lambda r: float(r[1:]) + 0.5).to_csv(tmp_path / "odd.csv")
    with pytest.raises(InputError, match="first column has no name and holds non-integers"):
        load_dataset(tmp_path / "odd.csv")  # an unnamed column of non-integers is neither an index nor a feature name
