"""Outputs that are not one tensor, and torch.export programs with a static batch size.

The first case is the one that used to end with exit 0 and wrong numbers: a forward returning
``(features, logits)`` had its features (64 wide) taken as logits. Each case is checked against the logits of
the eager module itself.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from calibscope.cli import app
from calibscope.errors import InputError
from calibscope.inference.engine import InferenceOptions, run_inference
from calibscope.inference.outputs import Outputs
from calibscope.inference.validate import validate_outputs
from calibscope.model_outputs import classifier_width, select_logits

runner = CliRunner()

TWO_HEADS = textwrap.dedent('''
    import torch
    from torch import nn

    class TwoOutputs(nn.Module):
        """forward -> (features [B, 64], logits [B, 10]), as many research codebases return."""

        def __init__(self, same_width: bool = False):
            super().__init__()
            width = 10 if same_width else 64
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU())
            self.head = nn.Linear(width, 10)

        def forward(self, x):
            f = self.body(x)
            return f, self.head(f)
''')


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_heads")
    (root / "two_heads.py").write_text(TWO_HEADS)
    namespace: dict = {}
    exec(compile(TWO_HEADS, str(root / "two_heads.py"), "exec"), namespace)  # the same class, to compare
    torch.manual_seed(0)
    model = namespace["TwoOutputs"]().eval()
    torch.save(model.state_dict(), root / "two.pt")
    x = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 10, (40,))
    np.savez(root / "data.npz", images=x.numpy(), labels=y.numpy())
    with torch.no_grad():
        logits = model(x.float() / 255)[1]
    return root, model, x, y, logits


def _numpy_ece(z: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf, acc = p.max(1), (p.argmax(1) == y).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    return sum(((conf > lo) & (conf <= hi)).mean() * abs(acc[(conf > lo) & (conf <= hi)].mean()
                                                         - conf[(conf > lo) & (conf <= hi)].mean())
               for lo, hi in zip(edges[:-1], edges[1:], strict=True) if ((conf > lo) & (conf <= hi)).any())


def test_features_then_logits_takes_the_logits_by_the_final_linear_width(two_heads):
    root, model, x, _, logits = two_heads
    assert classifier_width(model) == 10
    out = run_inference(model, x, options=InferenceOptions(batch_size=16), progress=False)
    assert out.logits.shape == (40, 10)
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=0)
    assert out.meta["output"] == 1


def test_features_then_logits_end_to_end_gives_the_right_ece(two_heads):
    root, _, _, y, logits = two_heads
    result = runner.invoke(app, ["ece", str(root / "two.pt"), "--arch", f"{root / 'two_heads.py'}:TwoOutputs",
                                 "--data", str(root / "data.npz"), "--json", "--no-cache"])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["results"][0]
    assert entry["num_classes"] == 10
    assert entry["ece"] == pytest.approx(_numpy_ece(logits.double().numpy(), y.numpy()), abs=1e-6)


def test_same_width_outputs_are_refused_and_output_says_which(two_heads):
    root, *_ = two_heads
    namespace: dict = {}
    exec(TWO_HEADS, namespace)
    torch.manual_seed(1)
    model = namespace["TwoOutputs"](same_width=True).eval()
    x = two_heads[2]
    with pytest.raises(InputError, match=r"ambiguous.*--output"):
        run_inference(model, x, progress=False)
    out = run_inference(model, x, options=InferenceOptions(output=1), progress=False)
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model(x.float() / 255)[1], atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="not among the model's outputs"):
        run_inference(model, x, options=InferenceOptions(output="probs"), progress=False)


def test_dicts_model_outputs_and_dataclasses():
    batch = 4
    logits, feats = torch.randn(batch, 3), torch.randn(batch, 8)
    assert select_logits({"features": feats, "logits": logits}, batch)[0] is logits
    assert select_logits({"scores": logits, "aux": torch.tensor(1.0)}, batch)[0] is logits  # only one tensor

    @dataclasses.dataclass
    class Result:
        embedding: torch.Tensor
        scores: torch.Tensor

    assert select_logits(Result(feats, logits), batch, width=3) == (logits, "scores")
    assert select_logits(Result(feats, logits), batch, output="scores")[0] is logits
    with pytest.raises(InputError, match="ambiguous"):
        select_logits(Result(feats, logits), batch)  # no width known, no name: refuse
    transformers = pytest.importorskip("transformers") if not _ci() else __import__("transformers")
    out = transformers.modeling_outputs.SequenceClassifierOutput(logits=logits, hidden_states=(feats, feats))
    assert select_logits(out, batch) == (logits, "logits")


def test_the_width_is_cross_checked_against_the_labels(two_heads):
    class WrongHead(nn.Module):  # returns (hidden [B, 10], logits [B, 3]): the labels 0..9 do not fit 3 classes
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(64, 10)
            self.head = nn.Linear(10, 3)

        def forward(self, x):
            h = self.body(x.flatten(1))
            return h, self.head(h)

    x, y = two_heads[2], two_heads[3]
    out = run_inference(WrongHead().eval(), x, progress=False)
    assert out.logits.shape[1] == 3
    with pytest.raises(InputError, match=r"labels range over \[0, 9\] but the model has 3 classes"):
        validate_outputs(Outputs(logits=out.logits, labels=y), source="'m'")


def test_integer_features_reach_a_float_model_as_floats():
    model = nn.Sequential(nn.Linear(5, 3)).eval()
    x = torch.randint(0, 17, (12, 5))  # e.g. counts stored as int64
    notes: list[str] = []
    out = run_inference(model, x, progress=False, on_notice=notes.append)
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model(x.float()), atol=1e-6, rtol=0)
    assert any("float32" in n for n in notes)


# ------------------------------------------------------------------------------------------ torch.export


class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
        self.classifier = nn.Linear(16, 4)

    def forward(self, x):
        return self.classifier(self.body(x))


@pytest.fixture(scope="module")
def static_pt2(tmp_path_factory):
    root = tmp_path_factory.mktemp("static")
    torch.manual_seed(0)
    model = _Small().eval()
    program = torch.export.export(model, (torch.randn(8, 1, 8, 8),))  # no dynamic_shapes: batch fixed at 8
    torch.export.save(program, root / "static.pt2")
    x = torch.randint(0, 256, (21, 1, 8, 8), dtype=torch.uint8)  # 21 = 2·8 + 5: the last batch is short
    np.savez(root / "data.npz", images=x.numpy(), labels=torch.randint(0, 4, (21,)).numpy())
    return root, model, x


def test_static_batch_program_pads_the_last_batch_and_drops_the_padding(static_pt2):
    from calibscope.loading.checkpoint import load_checkpoint

    root, model, x = static_pt2
    ckpt = load_checkpoint(root / "static.pt2")
    notes: list[str] = []
    for batch_size in (1024, 8, 5):
        out = run_inference(ckpt.module, x, options=InferenceOptions(batch_size=batch_size, capture_features=True),
                            progress=False, on_notice=notes.append)
        with torch.no_grad():
            torch.testing.assert_close(out.logits, model(x.float() / 255), atol=1e-5, rtol=0)
            torch.testing.assert_close(out.features, model.body(x.float() / 255), atol=1e-5, rtol=0)
        assert out.meta["static_batch_size"] == 8
    assert any("exported for batch size 8" in n for n in notes)


def test_static_batch_program_through_the_cli_and_a_wrong_shape_is_one_line(static_pt2, tmp_path):
    root, *_ = static_pt2
    ok = runner.invoke(app, ["ece", str(root / "static.pt2"), "--data", str(root / "data.npz"), "--no-cache"])
    assert ok.exit_code == 0, ok.output
    np.savez(tmp_path / "wide.npz", images=np.zeros((3, 1, 9, 9), np.uint8), labels=np.zeros(3, np.int64))
    bad = runner.invoke(app, ["ece", str(root / "static.pt2"), "--data", str(tmp_path / "wide.npz"), "--no-cache"])
    assert bad.exit_code == 2, bad.output
    assert "exported program refuses inputs" in bad.output and "Traceback" not in bad.output


def test_hessian_on_a_static_batch_program_matches_the_eager_model(static_pt2):
    from calibscope.diagnostics.hessian import top_hessian_eigenvalues
    from calibscope.loading.checkpoint import load_checkpoint

    root, model, x = static_pt2
    y = torch.randint(0, 4, (21,), generator=torch.Generator().manual_seed(0))
    program = load_checkpoint(root / "static.pt2").module
    kwargs = dict(top=1, examples=21, batch_size=6, params="last", tol=1e-6)
    got = top_hessian_eigenvalues(program, x, y, **kwargs).eigenvalues[0]
    want = top_hessian_eigenvalues(model, x, y, **kwargs).eigenvalues[0]
    assert got == pytest.approx(want, rel=1e-4)


def _ci() -> bool:
    import os

    return bool(os.environ.get("CI"))


def test_token_ids_under_x_stay_integers(tmp_path):
    from calibscope.loading.dataset import load_dataset

    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.EmbeddingBag(50, 8)
            self.classifier = nn.Linear(8, 3)

        def forward(self, ids):
            return self.classifier(self.embed(ids))

    ids = np.random.default_rng(0).integers(0, 50, size=(20, 6))
    np.savez(tmp_path / "ids.npz", x=ids, y=np.zeros(20, np.int64))
    ds = load_dataset(tmp_path / "ids.npz")
    assert ds.inputs.dtype == torch.int64  # not cast to float (the Embedding would refuse it)
    torch.manual_seed(0)
    model = Bag().eval()
    out = run_inference(model, ds.inputs, options=InferenceOptions(batch_size=7), progress=False)
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model(torch.from_numpy(ids)), atol=1e-6, rtol=0)
