"""Hostile ``.pt2`` archives: nothing in them may run without --trust (checked in a real subprocess, through the
command line, by the absence of a marker file), and archives torch.export itself writes keep loading."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from calibscope.errors import InputError, UntrustedFileError
from calibscope.loading.checkpoint import load_checkpoint
from calibscope.loading.pt2_safety import vet_export_archive

SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"
SAMPLE = SAMPLES / "digits_hard.pt2"
DATA = SAMPLES / "digits_test.npz"


def rewrite(src: Path, dst: Path, *, replace: dict[str, bytes] | None = None,
            first: dict[str, bytes] | None = None) -> Path:
    """Copy a zip, replacing members by name (``replace``) or writing extra members before the rest (``first``:
    a duplicate name then appears twice, the hostile copy first, as torch's reader takes the first)."""
    replace, first = replace or {}, first or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name we write on purpose
        for name, data in first.items():
            zout.writestr(name, data)
        for info in zin.infolist():
            zout.writestr(info.filename, replace.get(info.filename, zin.read(info.filename)))
    return dst


def member(src: Path, suffix: str) -> str:
    with zipfile.ZipFile(src) as zf:
        return next(n for n in zf.namelist() if n.endswith(suffix))


def program(src: Path) -> dict:
    with zipfile.ZipFile(src) as zf:
        return json.loads(zf.read(member(src, "models/model.json")))


def with_program(src: Path, dst: Path, edit) -> Path:
    prog = program(src)
    edit(prog)
    return rewrite(src, dst, replace={member(src, "models/model.json"): json.dumps(prog).encode()})


def build_tensor_pickle(marker: Path) -> bytes:
    """A pickle whose ``weights_only=True`` load fails with a TypeError (BUILD on a Tensor with a 3-tuple
    state) before the restricted loader reaches the payload, and whose ``weights_only=False`` load runs
    ``os.system('touch MARKER')``."""
    cmd = f"touch {marker}".encode()
    return (b"\x80\x02ctorch\nTensor\n)R" + b"(\x89NNt" + b"b" + b"0" + b"cposix\nsystem\n(X"
            + len(cmd).to_bytes(4, "little") + cmd + b"tR.")


@pytest.fixture(scope="module")
def dynamic_pt2(tmp_path_factory) -> Path:
    """A small model exported with a dynamic batch (so the program holds symbolic expressions and guards)."""
    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.reshape(x.shape[0], -1))

    torch.manual_seed(0)
    ep = torch.export.export(Flat().eval(), (torch.randn(4, 1, 8, 8),),
                             dynamic_shapes={"x": {0: torch.export.Dim("batch", min=2, max=4096)}})
    path = tmp_path_factory.mktemp("pt2") / "dynamic.pt2"
    torch.export.save(ep, str(path))
    return path


def hostile_cases(tmp: Path, dynamic: Path, marker: Path) -> dict[str, Path]:
    touch = f"touch {marker}"
    payload = build_tensor_pickle(marker)
    sample_inputs = member(SAMPLE, "sample_inputs/model.pt")

    def guard(code):
        return lambda prog: prog.__setitem__("guards_code", [code])

    def expr(prog):
        text = json.dumps(prog)
        first = next(s for s in _strings(prog) if s.startswith("Symbol("))
        prog.clear()
        prog.update(json.loads(text.replace(json.dumps(first), json.dumps(f"__import__('os').system('{touch}')"))))

    def target(prog):
        prog["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"

    return {
        "guard_import": with_program(SAMPLE, tmp / "guard_import.pt2",
                                     guard(f"__import__('os').system('{touch}') == 0")),
        "guard_torch_os": with_program(SAMPLE, tmp / "guard_torch_os.pt2", guard(f"torch.os.system('{touch}') == 0")),
        "guard_lambda": with_program(SAMPLE, tmp / "guard_lambda.pt2",
                                     guard(f"(lambda: torch.os.system('{touch}'))() == 0")),
        "expr_str": with_program(dynamic, tmp / "expr_str.pt2", expr),
        "node_target": with_program(SAMPLE, tmp / "node_target.pt2", target),
        "sample_inputs_typeerror": rewrite(SAMPLE, tmp / "sample_inputs.pt2", replace={sample_inputs: payload}),
        "duplicate_member": rewrite(SAMPLE, tmp / "duplicate.pt2", first={sample_inputs: payload}),
        "pickled_weight": _pickled_weight(tmp / "pickled_weight.pt2", payload),
        "aotinductor": rewrite(SAMPLE, tmp / "aoti.pt2",
                               first={"digits_hard/data/aotinductor/model/model.so": b"\x7fELF"}),
    }


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _pickled_weight(dst: Path, payload: bytes) -> Path:
    config_name = member(SAMPLE, "model_weights_config.json")
    with zipfile.ZipFile(SAMPLE) as zf:
        config = json.loads(zf.read(config_name))
    fqn, entry = next(iter(config["config"].items()))
    entry["use_pickle"] = True
    folder = config_name.rsplit("/", 1)[0]
    return rewrite(SAMPLE, dst, replace={config_name: json.dumps(config).encode(),
                                         f"{folder}/{entry['path_name']}": payload})


_RUNNER = """
import json, sys
from calibscope.cli import app
results = {}
for name, path in json.loads(sys.argv[1]).items():
    try:
        results[name] = app(["ece", path, "--data", sys.argv[2], "--no-cache"], standalone_mode=False) or 0
    except SystemExit as exc:
        results[name] = exc.code
    except BaseException as exc:
        results[name] = repr(exc)
print("RESULTS " + json.dumps(results))
"""


def test_hostile_archives_never_run_code_without_trust(tmp_path, dynamic_pt2):
    marker = tmp_path / "MARKER"
    cases = hostile_cases(tmp_path, dynamic_pt2, marker)
    env = {**os.environ, "CALIBSCOPE_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps({k: str(v) for k, v in cases.items()}),
                          str(DATA)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert not marker.exists(), f"code from a hostile archive ran: {run.stdout[-2000:]} {run.stderr[-2000:]}"
    line = next(line for line in run.stdout.splitlines() if line.startswith("RESULTS "))
    results = json.loads(line[len("RESULTS "):])
    assert results == {name: 2 for name in cases}, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("calibscope: error:")]
    assert len(errors) == len(cases), run.stderr[-3000:]
    assert "Traceback" not in run.stderr


def test_refusals_name_the_problem(tmp_path, dynamic_pt2):
    cases = hostile_cases(tmp_path, dynamic_pt2, tmp_path / "MARKER")
    expected = {"guard_import": "guard code", "guard_torch_os": "guard code", "guard_lambda": "guard code",
                "expr_str": "symbolic expression", "node_target": "torch.os.system",
                "sample_inputs_typeerror": "restricted loader", "pickled_weight": "restricted loader",
                "duplicate_member": "two members named", "aotinductor": "AOTInductor"}
    for name, path in cases.items():
        with pytest.raises(InputError, match=expected[name]):
            vet_export_archive(path)
    with pytest.raises(UntrustedFileError, match="--trust"):
        load_checkpoint(cases["guard_torch_os"])
    # duplicates are ambiguous whoever trusts the file: refused even with --trust
    with pytest.raises(InputError, match="two members named"):
        load_checkpoint(cases["duplicate_member"], trust=True)


def test_archives_torch_writes_still_load(dynamic_pt2):
    for path in sorted(SAMPLES.glob("*.pt2")):
        vet_export_archive(path)
    ckpt = load_checkpoint(dynamic_pt2)
    guards = program(dynamic_pt2)["guards_code"]
    srepr = [s for s in _strings(program(dynamic_pt2)) if s.startswith("Symbol(")]
    assert srepr, "the dynamic export should hold symbolic expressions"
    assert ckpt.module(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert isinstance(guards, list)


@pytest.mark.parametrize("guard", [
    "L['x'].size()[0] >= 2", "L['x'].size()[0] <= 4096", "(L['x'].size()[0] // 2) <= L['y'].size()[0]",
    "(8*L['x'].size()[0]) == (16*(L['x'].size()[0] // 2))", "(L['x'].size()[0] % 2) == 0",
    "math.isnan(L['t'])", "L['t'] == math.inf", "L['mode'] == 'train'", "L['z']['k'].stride()[1] == 1",
    "torch.sym_float(L['x'].size()[0]) > 1.5",
])
def test_guard_forms_torch_writes_are_allowed(guard):
    from calibscope.loading.pt2_safety import _guard_problem

    assert _guard_problem(guard) is None


@pytest.mark.parametrize("guard", [
    "torch.os.system('x')", "L['x'].__class__", "L.__class__", "().__class__", "[x for x in ()]",
    "L['x'].size()[0] == 1 if 1 else 0", "getattr(L, 'x')", "L['a\"b'] == 1", "L['x'].size()[0] == 1 # c",
    "math.os", "torch.ops.load_library('x')", "(lambda: 1)()", "L['x'].size(0)", "open('x')",
])
def test_other_guard_code_is_refused(guard):
    from calibscope.loading.pt2_safety import _guard_problem

    assert _guard_problem(guard) is not None


def test_pickle_fixture_really_runs_code_without_weights_only(tmp_path):
    """The fixture is what the issue describes: a TypeError under weights_only, code under weights_only=False."""
    marker = tmp_path / "M"
    payload = build_tensor_pickle(marker)
    with pytest.raises(TypeError):
        torch.load(io.BytesIO(payload), weights_only=True)
    with pytest.raises(RuntimeError):  # "Invalid magic number" — but only after the payload ran
        torch.load(io.BytesIO(payload), weights_only=False)
    assert marker.exists()
