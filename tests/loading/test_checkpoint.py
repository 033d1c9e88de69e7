"""load_checkpoint: every format of one DigitsCNN gives the original outputs; logits files in every format;
safety (nothing in a file runs without --trust); one-line messages that name the file."""

from __future__ import annotations

import io
import json
import os
import pathlib
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from calibscope.errors import InputError, UntrustedFileError
from calibscope.loading.checkpoint import load_checkpoint
from calibscope.loading.files import file_sha256
from calibscope.loading.types import LogitsCheckpoint, ModelCheckpoint
from calibscope.models import DigitsCNN

ARCH = "calibscope.models:DigitsCNN"
KWARGS = {"num_classes": 10, "channels": 8, "hidden": 16}
META = {"arch": ARCH, "arch_kwargs": KWARGS, "mean": [0.25], "std": [0.5],
        "class_names": [f"digit {i}" for i in range(10)], "num_classes": 10}


class Malicious:
    """Unpickling this calls ``action(*args)``."""

    def __init__(self, action, args):
        self.action, self.args = action, args

    def __reduce__(self):
        return self.action, self.args


def safetensors_metadata(meta: dict) -> dict[str, str]:
    return {f"calibscope.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


@pytest.fixture(scope="module")
def model() -> DigitsCNN:
    torch.manual_seed(0)
    return DigitsCNN(**KWARGS).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model) -> dict[str, pathlib.Path]:
    """One DigitsCNN in every model format (torch.export takes a few seconds, so this runs once)."""
    d = tmp_path_factory.mktemp("models")
    sd = model.state_dict()
    paths = {name: d / name for name in
             ("state_dict.pt", "meta.safetensors", "bare.safetensors", "model.ts", "model.pt2", "module.pt")}
    torch.save(sd, paths["state_dict.pt"])
    save_file(sd, paths["meta.safetensors"], metadata=safetensors_metadata(META))
    save_file(sd, paths["bare.safetensors"])
    extra = {"calibscope.json": json.dumps(META)}
    torch.jit.save(torch.jit.script(model), paths["model.ts"], _extra_files=extra)
    program = torch.export.export(model, (torch.randn(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, paths["model.pt2"], extra_files=extra)
    torch.save(model, paths["module.pt"])
    return paths


# --------------------------------------------------------------------------------------------- model formats

LOADS = {
    "state_dict.pt": ({"arch": ARCH, "arch_kwargs": KWARGS}, "state_dict"),
    "meta.safetensors": ({}, "safetensors"),
    "bare.safetensors": ({"arch": ARCH, "arch_kwargs": KWARGS}, "safetensors"),
    "model.ts": ({"arch": "ignored.for:SelfDescribing"}, "torchscript"),
    "model.pt2": ({"arch": "ignored.for:SelfDescribing"}, "export"),
    "module.pt": ({"trust": True}, "pickle"),
}


@pytest.mark.parametrize("name", list(LOADS))
def test_every_format_gives_the_original_outputs(saved, model, x, name):
    options, fmt = LOADS[name]
    ckpt = load_checkpoint(saved[name], **options)
    assert isinstance(ckpt, ModelCheckpoint)
    assert ckpt.format == fmt
    assert ckpt.sha256 == file_sha256(saved[name])
    assert ckpt.path == saved[name]
    with torch.no_grad():
        torch.testing.assert_close(ckpt.module(x), model(x), atol=1e-5, rtol=0)
    if fmt != "export":  # exported GraphModules have no train/eval switch
        assert not ckpt.module.training


def test_export_has_dynamic_batch(saved, model):
    module = load_checkpoint(saved["model.pt2"]).module
    for n in (3, 7):
        batch = torch.randn(n, 1, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(module(batch), model(batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["meta.safetensors", "model.ts", "model.pt2"])
def test_metadata_round_trips(saved, name):
    metadata = load_checkpoint(saved[name]).metadata
    for key in ("mean", "std", "class_names", "num_classes", "arch", "arch_kwargs"):
        assert metadata[key] == META[key], key


def test_cli_arch_overrides_metadata(saved, model, x):
    ckpt = load_checkpoint(saved["meta.safetensors"], arch=ARCH, arch_kwargs=KWARGS)
    assert ckpt.metadata["class_names"] == META["class_names"]
    with torch.no_grad():
        torch.testing.assert_close(ckpt.module(x), model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("wrap", [
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": sd},
    lambda sd: {"model_state_dict": sd, "optimizer": {"lr": 0.1}},
    lambda sd: {f"module.{k}": v for k, v in sd.items()},  # DistributedDataParallel
    lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}},  # Lightning
], ids=["state_dict", "model", "model_state_dict", "ddp", "lightning"])
def test_state_dict_wrappers(tmp_path, model, x, wrap):
    path = tmp_path / "wrapped.pth"
    torch.save(wrap(model.state_dict()), path)
    ckpt = load_checkpoint(path, arch=ARCH, arch_kwargs=KWARGS)
    with torch.no_grad():
        torch.testing.assert_close(ckpt.module(x), model(x), atol=1e-5, rtol=0)


def test_arch_from_python_file(tmp_path):
    (tmp_path / "tiny.py").write_text(
        "import torch\n\n\nclass Tiny(torch.nn.Module):\n"
        "    def __init__(self, k=3):\n        super().__init__()\n        self.fc = torch.nn.Linear(4, k)\n\n"
        "    def forward(self, x):\n        return self.fc(x)\n")
    torch.manual_seed(0)
    weights = {"fc.weight": torch.randn(5, 4), "fc.bias": torch.randn(5)}
    torch.save(weights, tmp_path / "tiny.bin")
    ckpt = load_checkpoint(tmp_path / "tiny.bin", arch=f"{tmp_path / 'tiny.py'}:Tiny", arch_kwargs={"k": 5})
    inputs = torch.randn(2, 4)
    torch.testing.assert_close(ckpt.module(inputs), inputs @ weights["fc.weight"].T + weights["fc.bias"])


def test_state_dict_needs_arch(saved):
    with pytest.raises(InputError, match=r"'.*state_dict.pt' holds only weights.*--arch package.module:callable"):
        load_checkpoint(saved["state_dict.pt"])
    with pytest.raises(InputError, match="no 'calibscope.arch'.*--arch"):
        load_checkpoint(saved["bare.safetensors"])


def test_arch_kwargs_type_error(saved):
    with pytest.raises(InputError, match="calibscope.models:DigitsCNN.*num_clases") as info:
        load_checkpoint(saved["state_dict.pt"], arch=ARCH, arch_kwargs={"num_clases": 10})
    assert "\n" not in str(info.value)


def test_missing_and_unexpected_keys(tmp_path, model):
    sd = dict(model.state_dict())
    del sd["classifier.bias"]
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pt"
    torch.save(sd, path)
    with pytest.raises(InputError) as info:
        load_checkpoint(path, arch=ARCH, arch_kwargs=KWARGS)
    message = str(info.value)
    assert "1 missing keys (classifier.bias)" in message and "1 unexpected keys (extra.weight)" in message
    assert "'" + str(path) + "'" in message and "\n" not in message


def test_shape_mismatch(saved):
    with pytest.raises(InputError, match=r"shape mismatches \(classifier.weight \[10, 16\] in the file vs "
                                         r"\[3, 16\] in the model"):
        load_checkpoint(saved["state_dict.pt"], arch=ARCH, arch_kwargs={**KWARGS, "num_classes": 3})


def test_truncated_safetensors(tmp_path, saved):
    data = saved["meta.safetensors"].read_bytes()
    path = tmp_path / "half.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        load_checkpoint(path)


def test_unknown_format(tmp_path):
    path = tmp_path / "noise.bin"
    path.write_bytes(bytes([0, 1, 250, 3]) + np.random.default_rng(0).bytes(256))
    with pytest.raises(InputError, match=r"'.*noise.bin' is not a checkpoint calibscope can read .*Supported:"):
        load_checkpoint(path)


def test_directory(tmp_path):
    with pytest.raises(InputError, match="looks like a directory"):
        load_checkpoint(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")


# ---------------------------------------------------------------------------------------------------- safety


def test_pickled_module_needs_trust(saved):
    with pytest.raises(UntrustedFileError) as info:
        load_checkpoint(saved["module.pt"])
    message = str(info.value)
    assert "contains pickled Python code" in message and "--trust" in message
    assert "calibscope.models.DigitsCNN" in message


@pytest.mark.parametrize("how", ["path-touch", "os-system"])
def test_malicious_pickle_never_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    payload = (Malicious(pathlib.Path.touch, (marker,)) if how == "path-touch"
               else Malicious(os.system, (f"touch '{marker}'",)))
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": payload}, path)
    with pytest.raises(UntrustedFileError, match="--trust"):
        load_checkpoint(path, arch=ARCH)
    assert not marker.exists()


def test_malicious_pt2_never_runs(tmp_path, saved):
    """torch.export.load unpickles 'use_pickle' weights with weights_only=False; we check them first."""
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save(Malicious(pathlib.Path.touch, (marker,)), buffer)
    path = tmp_path / "evil.pt2"
    with zipfile.ZipFile(saved["model.pt2"]) as src, zipfile.ZipFile(path, "w") as dst:
        (config_name,) = [n for n in src.namelist() if n.endswith("data/weights/model_weights_config.json")]
        config = json.loads(src.read(config_name))
        entry = next(iter(config["config"].values()))
        entry["use_pickle"] = True
        target = config_name.rsplit("/", 1)[0] + "/" + entry["path_name"]
        for info in src.infolist():
            data = {config_name: json.dumps(config).encode(), target: buffer.getvalue()}.get(info.filename)
            dst.writestr(info, src.read(info.filename) if data is None else data)
    with pytest.raises(UntrustedFileError, match="--trust"):
        load_checkpoint(path)
    assert not marker.exists()


def test_safetensors_metadata_cannot_name_os_system(tmp_path, model):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.safetensors"
    save_file(model.state_dict(), path, metadata={"calibscope.arch": "os:system",
                                                  "calibscope.arch_kwargs": json.dumps({"command": f"touch {marker}"})})
    with pytest.raises(UntrustedFileError) as info:
        load_checkpoint(path)
    assert f"'{path}'" in str(info.value) and "'os:system'" in str(info.value) and "--trust" in str(info.value)
    assert not marker.exists()
    # an --arch given by the user replaces the file's suggestion
    assert load_checkpoint(path, arch=ARCH, arch_kwargs=KWARGS).format == "safetensors"
    assert not marker.exists()


def test_export_from_another_torch_version(tmp_path, saved):
    path = tmp_path / "future.pt2"
    with zipfile.ZipFile(saved["model.pt2"]) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("models/model.json"):
                program = json.loads(data)
                program["schema_version"] = {"major": 99, "minor": 0}
                program["torch_version"] = "9.1.0"
                data = json.dumps(program).encode()
            dst.writestr(info, data)
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "written by torch 9.1.0 (export schema 99.0)" in message and torch.__version__ in message
    assert "TorchScript or safetensors" in message and "\n" not in message


# ------------------------------------------------------------------------------------------------ logits files

N, K = 20, 4


@pytest.fixture(scope="module")
def logits() -> torch.Tensor:
    return torch.randn(N, K, generator=torch.Generator().manual_seed(2)) * 3


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    return torch.randint(0, K, (N,), generator=torch.Generator().manual_seed(3))


def write_logits(path: pathlib.Path, fmt: str, values: torch.Tensor, labels: torch.Tensor | None,
                 key: str = "logits") -> pathlib.Path:
    path = path.with_suffix(f".{fmt}")
    if fmt == "npz":
        arrays = {key: values.numpy()} | ({} if labels is None else {"labels": labels.numpy()})
        np.savez(path, **arrays)
    elif fmt == "npy":
        np.save(path, values.numpy())
    elif fmt == "pt":
        torch.save({key: values} | ({} if labels is None else {"labels": labels}), path)
    elif fmt == "safetensors":
        save_file({key: values.contiguous()} | ({} if labels is None else {"labels": labels}), path)
    elif fmt == "csv":
        header = [f"class_{k}" for k in range(values.shape[1])] + ([] if labels is None else ["Label"])
        rows = [",".join(f"{float(v):.9g}" for v in row) + ("" if labels is None else f",{int(labels[i])}")
                for i, row in enumerate(values)]
        path.write_text("\n".join([",".join(header), *rows]) + "\n")
    return path


@pytest.mark.parametrize("fmt,with_labels", [
    ("npz", True), ("npz", False), ("npy", False), ("pt", True), ("pt", False),
    ("safetensors", True), ("safetensors", False), ("csv", True), ("csv", False)])
def test_logits_files(tmp_path, logits, labels, fmt, with_labels):
    path = write_logits(tmp_path / "out", fmt, logits, labels if with_labels else None)
    ckpt = load_checkpoint(path, arch=ARCH)  # --arch is irrelevant for logits and ignored
    assert isinstance(ckpt, LogitsCheckpoint)
    assert ckpt.format == fmt and not ckpt.from_probabilities
    assert ckpt.logits.dtype == torch.float32 and ckpt.logits.is_contiguous() and ckpt.logits.shape == (N, K)
    torch.testing.assert_close(ckpt.logits, logits, atol=1e-6, rtol=0)
    if with_labels:
        assert ckpt.labels is not None and ckpt.labels.dtype == torch.int64
        assert torch.equal(ckpt.labels, labels)
    else:
        assert ckpt.labels is None
    if fmt == "csv":
        assert ckpt.metadata["class_names"] == [f"class_{k}" for k in range(K)]


@pytest.mark.parametrize("fmt,key", [("npz", "probs"), ("npz", "logits"), ("npy", "logits"),
                                     ("safetensors", "probs"), ("pt", "probs"), ("csv", "logits")])
def test_probabilities_detected_and_converted(tmp_path, logits, labels, fmt, key):
    probs = torch.softmax(logits.double(), dim=1).float()
    path = write_logits(tmp_path / "probs", fmt, probs, None if fmt == "npy" else labels, key=key)
    ckpt = load_checkpoint(path)
    assert ckpt.from_probabilities
    torch.testing.assert_close(torch.softmax(ckpt.logits, dim=1), probs, atol=1e-6, rtol=0)


def test_zero_probabilities_stay_finite(tmp_path):
    path = tmp_path / "onehot.npz"
    np.savez(path, probs=np.eye(3, dtype=np.float32))
    ckpt = load_checkpoint(path)
    assert ckpt.from_probabilities and torch.isfinite(ckpt.logits).all()
    torch.testing.assert_close(torch.softmax(ckpt.logits, dim=1), torch.eye(3), atol=1e-6, rtol=0)


def test_probs_that_are_not_probabilities(tmp_path, logits):
    path = tmp_path / "bad.npz"
    np.savez(path, probs=logits.numpy())
    with pytest.raises(InputError, match="'probs' are not probabilities"):
        load_checkpoint(path)


def test_label_count_mismatch(tmp_path, logits, labels):
    path = tmp_path / "f.npz"
    np.savez(path, logits=logits.numpy(), labels=labels[:-1].numpy())
    with pytest.raises(InputError, match=f"'{path}': {N} logits rows but {N - 1} labels"):
        load_checkpoint(path)


def test_float_labels(tmp_path, logits, labels):
    path = tmp_path / "float_labels.npz"
    np.savez(path, logits=logits.numpy(), labels=labels.numpy().astype(np.float64))
    assert torch.equal(load_checkpoint(path).labels, labels)
    bad = labels.numpy().astype(np.float64)
    bad[5] = 1.5
    np.savez(path, logits=logits.numpy(), labels=bad)
    with pytest.raises(InputError, match="label 5 is 1.5"):
        load_checkpoint(path)


def test_npz_without_logits_names_keys(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((3, 2)), y=np.zeros(3))
    with pytest.raises(InputError, match=r"has arrays 'x', 'y' but no 'logits' or 'probs'"):
        load_checkpoint(path)


def test_logits_of_wrong_rank(tmp_path):
    path = tmp_path / "flat.npy"
    np.save(path, np.zeros(7, dtype=np.float32))
    with pytest.raises(InputError, match=r"has shape \[7\]; expected \[N, K\]"):
        load_checkpoint(path)


def test_npz_class_names(tmp_path, logits):
    path = tmp_path / "named.npz"
    np.savez(path, logits=logits.numpy(), class_names=np.array(["a", "b", "c", "d"]))
    assert load_checkpoint(path).metadata["class_names"] == ["a", "b", "c", "d"]


def test_csv_non_numeric_cell(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("cat,dog,target\n0.1,2.0,1\n0.3,oops,0\n")
    with pytest.raises(InputError, match=r"line 3 \(data row 2\), column 'dog': 'oops' is not a number"):
        load_checkpoint(path)


def test_csv_without_header(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("0.1,2.0,1\n0.3,0.2,0\n")
    with pytest.raises(InputError, match="no header row"):
        load_checkpoint(path)
