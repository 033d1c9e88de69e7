"""Files from other frameworks: pandas' to_csv (index column first), string labels, --labels files.

The pandas case used to end with exit 0 and wrong numbers: the index column was read as an 11th class.
Files are written by pandas and numpy themselves; ECE is checked against a numpy re-implementation.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from calibscope.errors import InputError, InputNote
from calibscope.loading.checkpoint import load_checkpoint
from calibscope.loading.labels import load_labels

if os.environ.get("CI"):
    import pandas as pd
else:
    pd = pytest.importorskip("pandas")

N, K = 60, 10
CLASSES = [f"c{k}" for k in range(K)]


@pytest.fixture(scope="module")
def probs_and_labels():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(N, K, generator=gen, dtype=torch.float64) * 2
    return torch.softmax(logits, 1).numpy(), torch.randint(0, K, (N,), generator=gen).numpy()


def _load(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ckpt = load_checkpoint(path)
    return ckpt, [str(w.message) for w in caught if issubclass(w.category, InputNote)]


def test_pandas_to_csv_index_column_is_dropped_and_said_once(tmp_path, probs_and_labels):
    probs, y = probs_and_labels
    frame = pd.DataFrame(probs)  # default integer column names 0..K-1
    frame["label"] = y
    frame.to_csv(tmp_path / "probs.csv")  # pandas' default: the index first, under an empty header
    ckpt, notes = _load(tmp_path / "probs.csv")
    assert ckpt.logits.shape == (N, K)  # not K + 1
    assert ckpt.from_probabilities
    np.testing.assert_allclose(torch.softmax(ckpt.logits.double(), 1).numpy(), probs, atol=1e-6)
    assert torch.equal(ckpt.labels, torch.from_numpy(y))
    assert len(notes) == 1 and "row index" in notes[0] and "ignored" in notes[0]
    assert ckpt.metadata["class_names"] == [str(k) for k in range(K)]


def test_pandas_index_of_a_filtered_frame_and_a_named_index(tmp_path, probs_and_labels):
    probs, y = probs_and_labels
    frame = pd.DataFrame(probs, columns=CLASSES).assign(label=y)
    frame.iloc[::2].to_csv(tmp_path / "every_other.csv")  # index 0, 2, 4, …: unnamed integers
    ckpt, notes = _load(tmp_path / "every_other.csv")
    assert ckpt.logits.shape == (N // 2, K) and len(notes) == 1
    frame.rename_axis("id").to_csv(tmp_path / "named.csv")
    ckpt, notes = _load(tmp_path / "named.csv")
    assert ckpt.logits.shape == (N, K) and "'id'" in notes[0]
    frame.to_csv(tmp_path / "clean.csv", index=False)
    ckpt, notes = _load(tmp_path / "clean.csv")
    assert ckpt.logits.shape == (N, K) and notes == []


def test_unnamed_first_column_that_is_no_index_is_refused(tmp_path, probs_and_labels):
    probs, _ = probs_and_labels
    frame = pd.DataFrame(probs, columns=CLASSES)
    frame.index = frame.index + 0.5
    frame.to_csv(tmp_path / "odd.csv")
    with pytest.raises(InputError, match="first column has no name"):
        load_checkpoint(tmp_path / "odd.csv")


def test_string_labels_are_mapped_by_the_header_or_refused(tmp_path, probs_and_labels):
    probs, y = probs_and_labels
    names = np.array(["cat", "dog", "emu"])
    p3 = probs[:, :3] / probs[:, :3].sum(1, keepdims=True)
    pd.DataFrame(p3, columns=names).assign(label=names[y % 3]).to_csv(tmp_path / "named.csv", index=False)
    ckpt, notes = _load(tmp_path / "named.csv")
    assert torch.equal(ckpt.labels, torch.from_numpy(y % 3)) and "class names" in notes[0]
    pd.DataFrame(p3, columns=["p0", "p1", "p2"]).assign(label=names[y % 3]).to_csv(tmp_path / "bad.csv",
                                                                                     index=False)
    with pytest.raises(InputError, match=r"class names \('cat', 'dog', 'emu'\) that are not among"):
        load_checkpoint(tmp_path / "bad.csv")


def test_cli_ece_on_the_pandas_file_matches_numpy(tmp_path, probs_and_labels):
    import json

    from typer.testing import CliRunner

    from calibscope.cli import app

    probs, y = probs_and_labels
    pd.DataFrame(probs).assign(label=y).to_csv(tmp_path / "probs.csv")
    result = CliRunner().invoke(app, ["ece", str(tmp_path / "probs.csv"), "--json"])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["results"][0]
    assert entry["num_classes"] == K
    conf, acc = probs.max(1), (probs.argmax(1) == y).astype(float)
    edges = np.linspace(0, 1, 16)
    ref = sum(((conf > a) & (conf <= b)).mean() * abs(acc[(conf > a) & (conf <= b)].mean()
                                                      - conf[(conf > a) & (conf <= b)].mean())
              for a, b in zip(edges[:-1], edges[1:], strict=True) if ((conf > a) & (conf <= b)).any())
    assert entry["ece"] == pytest.approx(ref, abs=1e-6)
    assert "row index" in result.stderr


# ------------------------------------------------------------------------------------------------- --labels


@pytest.mark.parametrize("writer", ["npy", "npy-onehot", "npy-column", "txt", "savetxt-onehot", "pandas-series",
                                    "pandas-noindex", "npz", "csv-names"])
def test_label_files(tmp_path, probs_and_labels, writer):
    _, y = probs_and_labels
    path = tmp_path / "labels"
    if writer == "npy":
        np.save(path := path.with_suffix(".npy"), y)
    elif writer == "npy-onehot":  # keras.utils.to_categorical(y)
        np.save(path := path.with_suffix(".npy"), np.eye(K, dtype=np.float32)[y])
    elif writer == "npy-column":
        np.save(path := path.with_suffix(".npy"), y[:, None].astype(np.float64))
    elif writer == "txt":
        np.savetxt(path := path.with_suffix(".txt"), y, fmt="%d")
    elif writer == "savetxt-onehot":
        np.savetxt(path := path.with_suffix(".txt"), np.eye(K)[y], fmt="%d")
    elif writer == "pandas-series":
        pd.Series(y).to_csv(path := path.with_suffix(".csv"))
    elif writer == "pandas-noindex":
        pd.Series(y, name="label").to_csv(path := path.with_suffix(".csv"), index=False)
    elif writer == "npz":
        np.savez(path := path.with_suffix(".npz"), y=y)
    elif writer == "csv-names":
        (path := path.with_suffix(".csv")).write_text("\n".join(CLASSES[k] for k in y) + "\n")
    got = load_labels(path, num_rows=N, class_names=CLASSES)
    assert got.dtype == torch.int64 and torch.equal(got, torch.from_numpy(y))


def test_label_files_refused(tmp_path, probs_and_labels):
    _, y = probs_and_labels
    np.save(tmp_path / "short.npy", y[:-1])
    with pytest.raises(InputError, match=f"holds {N - 1} labels but there are {N} rows"):
        load_labels(tmp_path / "short.npy", num_rows=N)
    np.save(tmp_path / "soft.npy", np.full((N, K), 1 / K))
    with pytest.raises(InputError, match="not one-hot"):
        load_labels(tmp_path / "soft.npy")
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    with pytest.raises(InputError, match="names no classes"):
        load_labels(tmp_path / "names.txt")
    np.save(tmp_path / "half.npy", np.array([0.0, 1.5]))
    with pytest.raises(InputError, match="label 1 is 1.5"):
        load_labels(tmp_path / "half.npy")


def test_bare_npy_of_logits_says_how_to_pass_labels(tmp_path, probs_and_labels):
    from calibscope.inference.pipeline import compute_outputs

    np.save(tmp_path / "logits.npy", np.log(probs_and_labels[0]).astype(np.float32))
    with pytest.raises(InputError, match=r"no labels: pass them with --labels FILE"):
        compute_outputs(load_checkpoint(tmp_path / "logits.npy"), None)
