"""`calibscope project` end to end: figure + JSON on the sample models, classes by name or index, the
automatic choice, and the bad-input matrix (exit 2, one line). The numbers themselves are checked against
numpy in tests/diagnostics/test_projection.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from calibscope.cli import project as project_module

runner = CliRunner()


def _app() -> typer.Typer:
    """The real app if `project` is registered there, else a local app with only this command."""
    from calibscope.cli import app

    if any(c.name == "project" for c in app.registered_commands):
        return app
    local = typer.Typer(pretty_exceptions_enable=False, add_completion=False)

    @local.callback()
    def _root() -> None:
        pass

    local.command(name="project", no_args_is_help=True)(project_module.project)
    return local


APP = _app()


def invoke(*args: str | Path):
    return runner.invoke(APP, ["project", *(str(a) for a in args)])


def test_hard_and_smoothed_models_side_by_side(samples, tmp_path):
    out = tmp_path / "figs"
    result = invoke(samples / "digits_hard.safetensors", samples / "digits_ls.safetensors",
                    "--data", samples / "digits_train.npz", "--val", samples / "digits_val.npz",
                    "--out", out, "--no-cache")
    assert result.exit_code == 0, result.stderr
    assert "Classes 1, 2, 8" in result.stdout and "most mutual confusion" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["projection.json", "projection.png", "projection.svg"]
    assert (out / "projection.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    doc = json.loads((out / "projection.json").read_text())
    assert doc["schema"] == "calibscope/projection" and doc["schema_version"] == 1
    assert [c["index"] for c in doc["classes"]] == [1, 2, 8]
    assert [c["name"] for c in doc["classes"]] == ["1", "2", "8"]
    assert doc["classes_picked_on"].endswith("digits_val.npz, pooled over 2 models")
    assert doc["per_class"] == 100
    hard, ls = doc["results"]
    assert hard["format"] == ls["format"] == "safetensors"
    assert hard["feature_layer"] == ls["feature_layer"] == "classifier"
    for r in (hard, ls):
        assert [s["split"] for s in r["splits"]] == ["train", "val"]
        for s in r["splits"]:
            assert len(s["coordinates"]) == len(s["labels"]) == len(s["indices"]) == sum(s["counts"])
            assert len(s["templates"]) == 3 and all(len(t) == 2 for t in s["templates"])
            assert set(s["labels"]) == {1, 2, 8}
        assert r["splits"][0]["counts"] == [15, 15, 15]  # 15 training examples per class
    for split in (0, 1):
        h, sm = hard["splits"][split]["statistics"], ls["splits"][split]["statistics"]
        assert sm["relative_spread_plane"] < h["relative_spread_plane"]
        assert sm["relative_spread_full"] < h["relative_spread_full"]


def test_json_to_stdout_with_classes_by_name(samples, tmp_path):
    # a copy of the training split with word class names
    d = dict(np.load(samples / "digits_train.npz"))
    d["class_names"] = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    data = tmp_path / "named.npz"
    np.savez(data, **d)
    result = invoke(samples / "digits_ls.safetensors", "--data", data, "--classes", "eight, one,7",
                    "--per-class", "5", "--json", "--no-cache")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["classes"] == [{"index": 8, "name": "eight"}, {"index": 1, "name": "one"},
                              {"index": 7, "name": "seven"}]
    assert doc["classes_picked_on"] is None and doc["per_class"] == 5
    (split,) = doc["results"][0]["splits"]
    assert split["counts"] == [5, 5, 5]
    expected = np.concatenate([np.flatnonzero(d["labels"] == c)[:5] for c in (8, 1, 7)])
    assert split["indices"] == expected.tolist()


def test_state_dict_with_arch_and_layer(samples, tmp_path):
    from safetensors.torch import load_file

    weights = tmp_path / "weights.pt"
    torch.save(load_file(str(samples / "digits_hard.safetensors")), weights)
    result = invoke(weights, "--arch", "calibscope.models:DigitsCNN", "--mean", "0.310071", "--std", "0.377343",
                    "--layer", "classifier", "--data", samples / "digits_train.npz", "--classes", "0,1,2",
                    "--json", "--no-cache")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["results"][0]["format"] == "state_dict" and doc["results"][0]["feature_layer"] == "classifier"


NO_LINEAR = """
import torch
from torch import nn

class ConvHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 8)

    def forward(self, x):
        return self.conv(x).flatten(1)
"""


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("two classes", "exactly 3 distinct classes, got 2"),
        ("duplicate", "class 1 is given twice"),
        ("unknown name", "unknown class 'seven'"),
        ("class without examples", "class 9 has no examples"),
        ("negative per-class", "--per-class"),
        ("torchscript", "TorchScript"),
        ("logits file", "holds precomputed logits"),
        ("no final linear", "no nn.Linear with out_features=10"),
        ("no data", "no dataset"),
    ],
)
def test_bad_input_is_one_line_exit_2(samples, tmp_path, case, message):
    model, data = samples / "digits_hard.safetensors", ["--data", samples / "digits_train.npz"]
    extra: list = []
    if case == "two classes":
        extra = ["--classes", "1,2"]
    elif case == "duplicate":
        extra = ["--classes", "1,1,2"]
    elif case == "unknown name":
        extra = ["--classes", "seven,1,2"]
    elif case == "class without examples":
        extra = ["--classes", "2,8,9", "--limit", "8"]  # the first 8 training examples hold no 9
    elif case == "negative per-class":
        extra = ["--per-class", "-1"]
    elif case == "torchscript":
        model = samples / "digits_hard.ts"
    elif case == "logits file":
        model = samples / "digits_hard_test_logits.npz"
    elif case == "no final linear":
        (tmp_path / "head.py").write_text(NO_LINEAR)
        model = tmp_path / "conv.pt"
        torch.save({"conv.weight": torch.zeros(10, 1, 8, 8), "conv.bias": torch.zeros(10)}, model)
        extra = ["--arch", f"{tmp_path / 'head.py'}:ConvHead"]
    elif case == "no data":
        data = []
    result = invoke(model, *data, *extra, "--no-cache")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("calibscope: error:"), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_figure_draws_the_coordinates(samples):
    from calibscope.diagnostics.projection import plane_projection
    from calibscope.render.projection_view import (
        CLASS_COLORS,
        ClassChoice,
        ProjectedSplit,
        ProjectionResult,
        projection_figure,
    )

    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(30, 4, generator=g), torch.randn(3, 4, generator=g), torch.randn(3, generator=g)
    y = torch.arange(30) % 3
    p = plane_projection(x, y, w, b, (2, 0, 1))
    result = ProjectionResult("m", Path("m.pt2"), "export", "fc",
                              (ProjectedSplit("train", Path("t.npz"), p), ProjectedSplit("val", Path("v.npz"), p)))
    fig = projection_figure([result], ClassChoice((2, 0, 1), ("c", "a", "b")))
    assert len(fig.axes) == 2
    ax = fig.axes[0]
    points = ax.collections[:3]  # one scatter per class, in the order a, b, c
    for i, (k, coll) in enumerate(zip((2, 0, 1), points, strict=True)):
        np.testing.assert_allclose(coll.get_offsets(), p.coordinates[p.labels == k].numpy())
        np.testing.assert_allclose(coll.get_facecolors()[0][:3], _rgb(CLASS_COLORS[i]))
    stars = ax.collections[3:6]
    np.testing.assert_allclose(np.vstack([s.get_offsets() for s in stars]), p.templates.numpy())
    assert ax.get_xlim() == fig.axes[1].get_xlim()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:3] == ["class 2 (c)", "class 0 (a)", "class 1 (b)"]


def _rgb(color):
    from matplotlib.colors import to_rgb

    return to_rgb(color)


def test_help_does_not_import_torch():
    code = (
        "import sys, typer\n"
        "from calibscope.cli import app, project\n"
        "if not any(c.name == 'project' for c in app.registered_commands):\n"
        "    app.command(name='project', no_args_is_help=True)(project.project)\n"
        "try:\n    app(['project', '--help'])\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "print('HEAVY=' + ','.join(m for m in ('torch', 'matplotlib', 'numpy') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--classes" in result.stdout and result.stdout.rstrip().endswith("HEAVY="), result.stdout[-300:]
