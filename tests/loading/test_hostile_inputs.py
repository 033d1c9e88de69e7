"""Hostile data files: each ends in seconds with one InputError (exit 2) and bounded memory, or reads correctly.

Each case runs in a forked child with a 2 GiB address-space allowance beyond the parent and a deadline
(:func:`tests.hostile.run_isolated`), so that a regression fails the test instead of the machine."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from calibscope.loading.checkpoint import load_checkpoint, open_logits_rows
from calibscope.loading.dataset import load_dataset
from tests import hostile

PEAK_LIMIT = 1 << 30  # growth of the child's resident memory allowed for any refused bomb


def refused(fn, *args, timeout: float = 60.0, match: str | None = None) -> dict:
    result = hostile.run_isolated(fn, *args, timeout=timeout)
    assert result["input_error"], f"expected an InputError, got {result['kind']}: {result['message']}\n" \
                                  f"{result.get('trace', '')}"
    assert "\n" not in result["message"].strip()
    if match:
        assert match in result["message"], result["message"]
    assert result["rss_growth"] < PEAK_LIMIT, f"peak memory grew by {result['rss_growth'] / 2**20:.0f} MiB"
    return result


# ------------------------------------------------------------------------------------- wrong numbers, exit 0


def test_npz_header_claiming_more_rows_than_it_holds(tmp_path):
    path = hostile.npz_header_lie(tmp_path / "logits.npz")
    streaming = hostile.run_isolated(lambda: open_logits_rows(path, min_bytes=0))
    assert streaming["kind"] == "ok" and streaming["message"] == "None"  # the eager loader is then the way in
    refused(load_checkpoint, path, match="7000000")
    refused(load_dataset, path)


def test_npy_header_lie_standalone(tmp_path):
    path = tmp_path / "x.npy"
    path.write_bytes(hostile.npy_bytes((1_000_000, 64), "<f4", bytes(4 * 64 * 3)))
    refused(load_dataset, path, match="1000000")
    refused(load_checkpoint, path)


# -------------------------------------------------------------------------------------------------- bombs


def test_npz_zip_bomb(tmp_path):
    path = hostile.npz_bomb(tmp_path / "bomb.npz")
    assert path.stat().st_size < 2 << 20
    refused(load_dataset, path, match="decompression bomb")
    refused(load_checkpoint, path, match="decompression bomb")


def test_pt2_bomb_even_with_trust(tmp_path):
    path = hostile.pt2_bomb(tmp_path / "bomb.pt2")
    assert path.stat().st_size < 2 << 20
    refused(load_checkpoint, path, match="decompression bomb")
    refused(lambda: load_checkpoint(path, trust=True), match="decompression bomb")


def test_cifar_shared_reference_bomb(tmp_path):
    path = hostile.cifar_shared_references(tmp_path / "data_batch_1")
    assert path.stat().st_size < 400
    refused(load_dataset, path, match="pickle bomb")


def test_bytearray_pickle_bomb(tmp_path):
    path = hostile.bytearray_bomb(tmp_path / "test_batch")
    assert path.stat().st_size < 64
    refused(load_dataset, path, match="bytearray")


def test_idx_gzip_bomb(tmp_path):
    path = hostile.idx_gzip_bomb(tmp_path / "t10k-images-idx3-ubyte.gz")
    assert path.stat().st_size < 2 << 20
    refused(load_dataset, path, match="decompression bomb")


def test_png_decompression_bomb(tmp_path):
    root = hostile.image_folder(tmp_path / "imgs", {"a": [hostile.png_bytes(20000, 20000)],
                                                    "b": [hostile.png_bytes(20000, 20000)]})
    refused(load_dataset, root, match="decompression bomb")


# --------------------------------------------------------------------------- impossible shapes, offsets, dims


@pytest.mark.parametrize("header, data", [
    ({"x": {"dtype": "F32", "shape": [100000, 100000, 100000], "data_offsets": [0, 16]}}, bytes(16)),
    ({"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 0]}}, bytes(16)),
    ({"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 1 << 40]}}, bytes(16)),
    ({"x": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}}, bytes(16)),
    ({"x": {"dtype": "Q9", "shape": [4], "data_offsets": [0, 16]}}, bytes(16)),
    ({"x": [1, 2, 3]}, b""),
])
def test_safetensors_impossible_shapes_and_offsets(tmp_path, header, data):
    path = hostile.safetensors_file(tmp_path / "t.safetensors", header, data)
    refused(load_dataset, path)
    refused(load_checkpoint, path)


def test_huge_headers_used_as_data(tmp_path):
    npy = tmp_path / "h.npy"
    npy.write_bytes(b"\x93NUMPY\x02\x00" + struct.pack("<I", 200_000_000) + b"{" + b" " * 1000)
    refused(load_dataset, npy)
    st = tmp_path / "h.safetensors"
    st.write_bytes(struct.pack("<Q", 90_000_000) + b"{" + b" " * 1000)
    refused(load_dataset, st)


@pytest.mark.parametrize("dims", [(65536, 65536, 65536, 65536), (4294967295, 4294967295, 2), (0, 28, 28)])
def test_idx_dimensions_that_overflow(tmp_path, dims):
    path = hostile.idx_file(tmp_path / "t10k-images-idx3-ubyte", dims, bytes(16))
    refused(load_dataset, path)


def test_dataset_npz_with_inputs_but_no_labels_loads_without_labels(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, x=np.zeros((5, 3), np.float32))
    assert load_dataset(path).labels is None  # commands that need labels refuse (tests/cli)


# ---------------------------------------------------------------------------------- hangs: loops and FIFOs


def test_image_folder_symlink_loop_ends(tmp_path):
    root = hostile.symlink_loop_folder(tmp_path / "loop")
    result = hostile.run_isolated(lambda: load_dataset(root).inputs.shape[0], timeout=60)
    assert result["kind"] == "ok" and result["message"] == "2", result


def test_fifo_as_data_is_refused_at_once(tmp_path):
    fifo = tmp_path / "data.npz"
    os.mkfifo(fifo)
    refused(load_dataset, fifo, timeout=30, match="FIFO")
    refused(load_checkpoint, fifo, timeout=30, match="FIFO")


def test_fifo_image_in_a_folder_is_refused(tmp_path):
    root = hostile.image_folder(tmp_path / "imgs", {"a": [hostile.png_bytes(2, 2, rows=bytes(4))],
                                                    "b": [hostile.png_bytes(2, 2, rows=bytes(4))]})
    os.mkfifo(root / "b" / "z.png")
    refused(load_dataset, root, timeout=30, match="FIFO")


# ------------------------------------------------------------------------------------------ 16-bit images


def test_16_bit_png_is_scaled_by_its_real_bit_depth(tmp_path):
    values = np.array([[0, 1000], [40000, 65535]], dtype=">u2")
    png = hostile.png_bytes(2, 2, bit_depth=16, rows=values.tobytes())
    root = hostile.image_folder(tmp_path / "imgs", {"a": [png], "b": [png]})
    with pytest.warns(UserWarning, match="16-bit"):
        ds = load_dataset(root)
    assert ds.metadata["bit_depth"] == 16 and ds.metadata["image_modes"][0].startswith("I")
    expected = values.astype(np.float64) / 65535.0  # independent: the samples written above, by hand
    np.testing.assert_allclose(ds.inputs[0, 0].numpy(), expected, rtol=0, atol=1e-7)
    assert float(ds.inputs.max()) == 1.0 and str(ds.inputs.dtype) == "torch.float32"


def test_8_bit_pngs_stay_uint8(tmp_path):
    rows = np.array([[0, 7], [200, 255]], dtype=np.uint8)
    png = hostile.png_bytes(2, 2, rows=rows.tobytes())
    ds = load_dataset(hostile.image_folder(tmp_path / "imgs", {"a": [png], "b": [png]}))
    assert str(ds.inputs.dtype) == "torch.uint8" and ds.metadata["bit_depth"] == 8
    np.testing.assert_array_equal(ds.inputs[0, 0].numpy(), rows)

