"""Property-based fuzzing of every parser: random mutations (byte changes, truncation, insertion) of a valid
sample file give a result or one :class:`~calibscope.errors.InputError` — never another exception, a hang (a
per-example deadline) or unbounded memory (each parser's run happens in a forked child with a 2 GiB
address-space allowance).

``CALIBSCOPE_FUZZ_EXAMPLES`` (default 40 per parser, a few seconds each) sets how many mutations are tried:
``CALIBSCOPE_FUZZ_EXAMPLES=2000 pytest tests/fuzz`` is the long run.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests import hostile  # noqa: E402

EXAMPLES = int(os.environ.get("CALIBSCOPE_FUZZ_EXAMPLES", "40"))
DEADLINE_S = 10  # per example: a parser that takes longer on a small file is hanging


class Hang(BaseException):
    """Raised by SIGALRM when one example runs past the deadline."""


def _alarm(signum, frame):
    raise Hang(f"a parser ran past {DEADLINE_S} s on one mutated file")


def mutate(data: bytes, changes: list[tuple[int, int]], cut: int | None, insert: tuple[int, bytes] | None) -> bytes:
    b = bytearray(data)
    for pos, value in changes:
        b[pos % len(b)] = value
    if insert is not None:
        at = insert[0] % (len(b) + 1)
        b[at:at] = insert[1]
    if cut is not None:
        b = b[: cut % (len(b) + 1)]
    return bytes(b)


# positions near the start (headers) are where most structure is: favour them
_POSITIONS = st.one_of(st.integers(0, 255), st.integers(0, 1 << 30))
MUTATIONS = st.tuples(st.lists(st.tuples(_POSITIONS, st.integers(0, 255)), min_size=1, max_size=6),
                      st.one_of(st.none(), st.integers(0, 1 << 30)),
                      st.one_of(st.none(), st.tuples(_POSITIONS, st.binary(min_size=1, max_size=16))))


def fuzz(seed: bytes, call, name: str) -> None:
    """Run ``call(path)`` on ``EXAMPLES`` mutations of ``seed`` (written to a file called ``name``) in a forked
    child; fail with the first input that raised anything but InputError."""

    def campaign() -> str:
        from calibscope.errors import InputError

        folder = Path(tempfile.mkdtemp(prefix="calibscope-fuzz-"))
        path = folder / name
        signal.signal(signal.SIGALRM, _alarm)

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(MUTATIONS)
        def one(m):
            data = mutate(seed, *m)
            path.write_bytes(data)
            signal.alarm(DEADLINE_S)
            try:
                call(path)
            except InputError as exc:
                assert "\n" not in str(exc).strip(), f"a multi-line message: {exc}"
            finally:
                signal.alarm(0)

        one()
        return "ok"

    result = hostile.run_isolated(campaign, timeout=max(120, EXAMPLES * DEADLINE_S))
    assert result["kind"] == "ok", f"{result['kind']}: {result['message']}\n{result.get('trace', '')}"


# ------------------------------------------------------------------------------------------------ seeds


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _logits_npz() -> bytes:
    rng = np.random.default_rng(0)
    return _npz(logits=rng.standard_normal((6, 3)).astype(np.float32), labels=np.array([0, 1, 2, 0, 1, 2]))


def _dataset_npz() -> bytes:
    rng = np.random.default_rng(1)
    return _npz(x=rng.integers(0, 255, (4, 1, 8, 8), dtype=np.uint8), y=np.array([0, 1, 0, 1]))


def _safetensors() -> bytes:
    import torch
    from safetensors.torch import save

    g = torch.Generator().manual_seed(0)
    return save({"logits": torch.randn(5, 3, generator=g), "labels": torch.tensor([0, 1, 2, 1, 0])},
                metadata={"calibscope.class_names": json.dumps(["a", "b", "c"])})


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(12, dtype=np.float32).reshape(4, 3))
    return buf.getvalue()


def _csv() -> bytes:
    return b"a,b,c,label\n0.1,2.0,-1.5,0\n1.0,0.5,0.25,2\n-3,4,5e-3,1\n"


def _idx() -> bytes:
    return bytes([0, 0, 8, 3]) + struct.pack(">3I", 3, 4, 4) + bytes(range(48))


def _cifar() -> bytes:
    rng = np.random.default_rng(2)
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": [0, 1, 2],
             b"data": rng.integers(0, 255, (3, 3072), dtype=np.uint8), b"filenames": [b"a.png", b"b.png", b"c.png"]}
    return pickle.dumps(batch, protocol=2)


def _png() -> bytes:
    return hostile.png_bytes(4, 4, rows=bytes(range(16)))


def _toml() -> bytes:
    return b'data = "test.npz"\nlimit = 100\nbins = 15\nmax_ece = 0.05\nnorm = "l1"\nmean = [0.5]\nstd = [0.25]\n'


def _baseline() -> bytes:
    from typer.testing import CliRunner

    from calibscope.cli import app

    result = CliRunner().invoke(app, ["ece", str(hostile.SAMPLES / "digits_hard_test_logits.npz"), "--json"])
    assert result.exit_code == 0, result.stderr
    return result.stdout.encode()


# ------------------------------------------------------------------------------------------------ targets


def _sniff_and_load_checkpoint(path: Path) -> None:
    from calibscope.loading import files
    from calibscope.loading.checkpoint import load_checkpoint

    files.sniff(path)
    load_checkpoint(path)


def _load_dataset(path: Path) -> None:
    from calibscope.loading.dataset import load_dataset

    load_dataset(path)


def _numpy_readers(path: Path) -> None:
    from calibscope.loading import files

    files.read_numpy(path)
    files.stored_arrays(path)


def _safetensors_readers(path: Path) -> None:
    from calibscope.loading import files
    from calibscope.loading.checkpoint import open_logits_rows

    files.read_safetensors(path)
    open_logits_rows(path)


def _cifar_reader(path: Path) -> None:
    from calibscope.loading.dataset import load_dataset
    from calibscope.loading.safe_pickle import safe_load

    safe_load(path)
    load_dataset(path)


def _image_folder(path: Path) -> None:
    from calibscope.loading.dataset import load_dataset

    root = path.parent / "images"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        (root / cls / "0.png").write_bytes(path.read_bytes())
    load_dataset(root)


def _config(path: Path) -> None:
    from calibscope.loading.config import find_defaults

    find_defaults(path.parent)


def _baseline_reader(path: Path) -> None:
    from calibscope.workflows.gate import read_baseline

    read_baseline(path)


CASES = {
    "checkpoint-npz": (_logits_npz, _sniff_and_load_checkpoint, "logits.npz"),
    "checkpoint-npy": (_npy, _sniff_and_load_checkpoint, "logits.npy"),
    "checkpoint-csv": (_csv, _sniff_and_load_checkpoint, "logits.csv"),
    "safetensors": (_safetensors, _safetensors_readers, "logits.safetensors"),
    "npz": (_dataset_npz, _numpy_readers, "data.npz"),
    "dataset-npz": (_dataset_npz, _load_dataset, "data.npz"),
    "dataset-csv": (_csv, _load_dataset, "data.csv"),
    "idx": (_idx, _load_dataset, "t10k-images-idx3-ubyte"),
    "cifar": (_cifar, _cifar_reader, "test_batch"),
    "image-folder": (_png, _image_folder, "seed.png"),
    "toml-config": (_toml, _config, "calibscope.toml"),
    "baseline-json": (_baseline, _baseline_reader, "baseline.json"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_mutated_files_give_a_result_or_one_input_error(case):
    make_seed, call, name = CASES[case]
    fuzz(make_seed(), call, name)


def test_the_seeds_themselves_are_valid(tmp_path):
    """The fuzzing starts from files each parser accepts (so mutations explore near-valid inputs)."""
    for case, (make_seed, call, name) in sorted(CASES.items()):
        folder = tmp_path / case
        folder.mkdir()
        (folder / name).write_bytes(make_seed())
        if case == "toml-config":
            np.savez(folder / "test.npz", x=np.zeros((2, 3), np.float32), y=np.array([0, 1]))
        call(folder / name)
