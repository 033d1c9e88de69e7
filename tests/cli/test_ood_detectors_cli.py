"""`calibscope ood --score knn,vim,gram,odin` and `selective --score knn,...` end to end: the numbers the command
prints equal pytorch-ood 0.4's detectors run by hand on the same model and data (digits_hard; in: the first 300
test digits, OOD: the same digits inverted; fit: the 150 training digits; Gram normalised on --val). pytorch-ood
returns outlier scores; ours are −theirs. The JSON carries each score's mean on both sides and the AUROC, which
are compared against the means of −pytorch-ood's scores and sklearn's roc_auc_score of them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from calibscope.cli import ood as ood_cli
from calibscope.cli import selective as selective_cli
from tests.reference_libs import pytorch_ood_detector

sklearn_metrics = pytest.importorskip("sklearn.metrics")
SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"
app = typer.Typer(pretty_exceptions_enable=False)
app.command(name="ood")(ood_cli.ood)
app.command(name="selective")(selective_cli.selective)
runner = CliRunner()
N = 300


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from calibscope.loading.checkpoint import load_checkpoint

    root = tmp_path_factory.mktemp("ood_detectors")
    test = np.load(SAMPLES / "digits_test.npz")
    np.savez(root / "inverted.npz", images=(255 - test["images"][:N]).astype(np.uint8))
    ckpt = load_checkpoint(SAMPLES / "digits_hard.safetensors")
    model = ckpt.module.eval()
    mean = torch.tensor(ckpt.metadata["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(ckpt.metadata["std"]).view(1, -1, 1, 1)

    def prepared(images):
        return (torch.from_numpy(images).float() / 255 - mean) / std

    train = np.load(SAMPLES / "digits_train.npz")
    val = np.load(SAMPLES / "digits_val.npz")
    sets = {"in": prepared(test["images"][:N]), "ood": prepared((255 - test["images"][:N]).astype(np.uint8)),
            "train": prepared(train["images"]), "val": prepared(val["images"])}
    labels = {"train": torch.from_numpy(train["labels"]).long(), "val": torch.from_numpy(val["labels"]).long()}
    return root, model, sets, labels


def run_json(*args):
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    return json.loads(r.stdout)


def ood_doc(root, *extra):
    return run_json("ood", SAMPLES / "digits_hard.safetensors", "--data", SAMPLES / "digits_test.npz", "--limit", N,
                    "--ood-data", root / "inverted.npz", "--train", SAMPLES / "digits_train.npz", "--json",
                    "--no-cache",
                    *extra)


def features(model, x):
    head = model.classifier
    captured = []
    handle = head.register_forward_pre_hook(lambda mod, args: captured.append(args[0].detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return captured[0]


def check(entry, ours_in, ours_out):
    y = np.r_[np.ones(len(ours_in)), np.zeros(len(ours_out))]
    assert entry["mean_in"] == pytest.approx(float(np.mean(ours_in)), abs=1e-5, rel=1e-6)
    assert entry["mean_out"] == pytest.approx(float(np.mean(ours_out)), abs=1e-5, rel=1e-6)
    assert entry["metrics"]["auroc"] == pytest.approx(sklearn_metrics.roc_auc_score(y, np.r_[ours_in, ours_out]),
                                                      abs=1e-9)


def test_knn_and_vim_equal_pytorch_ood_end_to_end(digits, monkeypatch):
    root, model, sets, labels = digits
    doc = ood_doc(root, "--score", "knn,vim", "--knn-k", 10, "--vim-dim", 32)
    f = {k: features(model, v) for k, v in sets.items()}
    knn = pytorch_ood_detector("knn").KNN(None, k=10).fit_features(f["train"], labels["train"])
    check(doc["results"][0], -knn.predict_features(f["in"]).double().numpy(),
          -knn.predict_features(f["ood"]).double().numpy())
    head = model.classifier
    # pytorch-ood casts to float32 before pinv/eigh (150 examples, 128 dimensions: the residual space's basis
    # then moves the score by 1e-3); run its code in float64, as tests/diagnostics/test_ood_detectors.py does
    monkeypatch.setattr(torch.Tensor, "float", lambda self: self.to(torch.float64))
    vim = pytorch_ood_detector("vim").ViM(None, d=32, w=head.weight.detach().double(), b=head.bias.detach().double())
    vim.fit_features(f["train"].double(), labels["train"])
    check(doc["results"][1], -vim.predict_features(f["in"].double()).double().numpy(),
          -vim.predict_features(f["ood"].double()).double().numpy())
    assert doc["results"][1]["definition"]["vim_dim"] == 32 and doc["results"][0]["definition"]["knn_k"] == 10
    assert doc["data"]["train"].endswith("digits_train.npz")


def test_gram_with_val_equals_pytorch_ood_end_to_end(digits, monkeypatch):
    """pytorch-ood holds out a fraction of its fit data for the normalisers; with --val ours uses that set, so
    the reference is given the bounds of all training digits and the normalisers of the val digits."""
    root, model, sets, labels = digits
    doc = ood_doc(root, "--score", "gram", "--val", SAMPLES / "digits_val.npz", "--gram-poles", 4)
    gram = pytorch_ood_detector("gram")
    m = copy.deepcopy(model).double()
    fe = m.features
    blocks = [nn.Sequential(fe[0], fe[1]), nn.Sequential(fe[2], fe[3]), nn.Sequential(fe[4], fe[5], fe[6], fe[7])]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ref = gram.Gram(m.classifier, blocks, num_classes=10, num_poles_list=[1, 2, 3, 4])
        monkeypatch.setattr(gram.Gram, "validation_fraction", 0.0)  # bounds from every training digit
        ref.fit([(sets["train"].double(), labels["train"])])
        # normalisers from the val digits against their own class's bounds (pytorch-ood's rule), by its code
        _, maps = ref._create_feature_list(sets["val"].double())
        norms = []
        for layer in range(3):
            dev = sum(ref._deviation(ref._gram_vector(maps[layer], p), ref.feature_min[layer][i][labels["val"]],
                                     ref.feature_max[layer][i][labels["val"]]) for i, p in enumerate([1, 2, 3, 4]))
            norms.append(dev.mean() if dev.mean() > 0 else torch.tensor(1.0))
        ref.layer_norm = torch.stack(norms)
        theirs_in, theirs_out = ref.predict(sets["in"].double()), ref.predict(sets["ood"].double())
    finally:
        torch.set_default_dtype(previous)
    entry = doc["results"][0]
    # our maps come from the float32 model (as every command runs); the reference's from float64
    assert entry["mean_in"] == pytest.approx(-float(theirs_in.mean()), rel=1e-5)
    assert entry["mean_out"] == pytest.approx(-float(theirs_out.mean()), rel=1e-5)
    y = np.r_[np.ones(N), np.zeros(N)]
    assert entry["metrics"]["auroc"] == pytest.approx(
        sklearn_metrics.roc_auc_score(y, -np.r_[theirs_in.numpy(), theirs_out.numpy()]), abs=1e-4)
    assert entry["definition"]["fit"]["split"] == "separate" and entry["definition"]["fit"]["n_val"] == 300


def test_odin_equals_pytorch_ood_end_to_end(digits):
    root, model, sets, labels = digits
    doc = ood_doc(root, "--score", "odin", "--odin-temperature", 100, "--odin-epsilon", 0.002)
    from calibscope.loading.checkpoint import load_checkpoint

    ckpt = load_checkpoint(SAMPLES / "digits_hard.safetensors")
    mu = torch.tensor(ckpt.metadata["mean"]).view(1, -1, 1, 1)
    sd = torch.tensor(ckpt.metadata["std"]).view(1, -1, 1, 1)
    odin = pytorch_ood_detector("odin").ODIN(lambda x: model((x - mu) / sd), eps=0.002, temperature=100.0)
    raw = {k: sets[k] * sd + mu for k in ("in", "ood")}
    check(doc["results"][0], -odin.predict(raw["in"]).double().numpy(), -odin.predict(raw["ood"]).double().numpy())


def test_selective_takes_the_detectors_too(digits):
    root, model, sets, labels = digits
    doc = run_json("selective", SAMPLES / "digits_hard.safetensors", "--data", SAMPLES / "digits_test.npz",
                   "--limit", N, "--train", SAMPLES / "digits_train.npz", "--score", "msp,knn,gradnorm", "--knn-k", 10,
                   "--json", "--no-cache")
    assert [r["score"] for r in doc["results"]] == ["msp", "knn", "gradnorm"]
    f_in = features(model, sets["in"])
    knn = pytorch_ood_detector("knn").KNN(None, k=10).fit_features(features(model, sets["train"]), labels["train"])
    conf = -knn.predict_features(f_in).double()
    with torch.no_grad():
        correct = model(sets["in"]).argmax(1) == torch.from_numpy(np.load(SAMPLES / "digits_test.npz")["labels"][:N])
    from calibscope.diagnostics.selective import area_under_risk_coverage

    assert doc["results"][1]["aurc"] == pytest.approx(area_under_risk_coverage(conf, correct), abs=1e-9)


@pytest.mark.parametrize(("ckpt", "extra", "message"), [
    ("digits_hard_test_logits.npz", ["--score", "knn"], "logits file"),
    ("digits_hard.ts", ["--score", "gram"], "TorchScript"),
    ("digits_hard.safetensors", ["--score", "vim"], "--train"),
    ("digits_hard.safetensors", ["--score", "ash", "--ash-variant", "ash-x"], "--ash-variant"),
    ("digits_hard.safetensors", ["--score", "knn", "--knn-k", "1000"], "--knn-k"),
])
def test_impossible_detectors_are_one_line_exit_2(digits, ckpt, extra, message):
    root = digits[0]
    args = ["ood", str(SAMPLES / ckpt), "--ood-data", str(root / "inverted.npz"), *extra]
    if not ckpt.endswith(".npz"):
        args += ["--data", str(SAMPLES / "digits_test.npz"), "--limit", str(N)]
    if "1000" in extra:
        args += ["--train", str(SAMPLES / "digits_train.npz")]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and r.stdout == "", (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr, r.stderr
