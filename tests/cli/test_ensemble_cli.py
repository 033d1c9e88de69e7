"""--ensemble and --mc-dropout on the command line: the ensemble as one model, the epistemic scores in `ood` and
`selective` against scikit-learn on numpy-computed mutual information, and one-line exit-2 errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from calibscope import Session
from calibscope.cli import ece as ece_cli
from calibscope.cli import ood as ood_cli
from calibscope.cli import selective as selective_cli
from calibscope.cli import temperature as temperature_cli

sklearn_metrics = pytest.importorskip("sklearn.metrics")

app = typer.Typer(pretty_exceptions_enable=False)
for module, name in ((ece_cli, "ece"), (ood_cli, "ood"), (selective_cli, "selective"),
                     (temperature_cli, "temperature")):
    app.command(name=name)(getattr(module, name))
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("calibscope: error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    return lines[0]


def _np_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _np_mi(member_logits):
    p = _np_softmax(member_logits)
    mean = p.mean(0)

    def h(q):
        return -(q * np.log(q)).sum(-1)
    return h(mean) - h(p).mean(0)


@pytest.fixture(scope="module")
def shuffled(samples, tmp_path_factory):
    """OOD inputs: the test digits with their pixels shuffled, image by image."""
    data = np.load(samples / "digits_test.npz")
    images = data["images"].copy()
    rng = np.random.default_rng(0)
    flat = images.reshape(len(images), -1)
    for row in flat:
        rng.shuffle(row)
    path = tmp_path_factory.mktemp("ood") / "shuffled.npz"
    np.savez(path, images=flat.reshape(images.shape), labels=data["labels"])
    return path


def test_ece_ensemble_is_one_model(samples):
    paths = [samples / f"digits_{k}.safetensors" for k in ("hard", "ls", "sam")]
    result = invoke("ece", "--ensemble", *paths, "--data", samples / "digits_test.npz", "--json")
    assert result.exit_code == 0, result.stderr
    (entry,) = json.loads(result.stdout)["results"]
    assert entry["name"] == "ensemble(digits_hard.safetensors,digits_ls.safetensors,digits_sam.safetensors)"
    s = Session(samples / "digits_test.npz")
    mean = _np_softmax(np.stack([s.outputs(p)[0].logits.numpy() for p in paths])).mean(0)
    y = np.load(samples / "digits_test.npz")["labels"]
    assert entry["accuracy"] == pytest.approx((mean.argmax(1) == y).mean(), abs=1e-15)
    assert entry["nll"] == pytest.approx(-np.log(mean[np.arange(len(y)), y]).mean(), rel=1e-12)


def test_ood_mutual_information_equals_sklearn(samples, shuffled):
    paths = [samples / f"digits_{k}.safetensors" for k in ("hard", "ls", "sam")]
    result = invoke("ood", "--ensemble", *paths, "--data", samples / "digits_test.npz", "--ood-data", shuffled,
                    "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    by_score = {r["score"]: r["metrics"] for r in doc["results"]}
    assert list(by_score) == ["msp", "mutual-information", "disagreement"]  # the defaults for an ensemble
    z_in = np.stack([Session(samples / "digits_test.npz").outputs(p)[0].logits.numpy() for p in paths])
    z_out = np.stack([Session(shuffled).outputs(p)[0].logits.numpy() for p in paths])
    mi_in, mi_out = _np_mi(z_in), _np_mi(z_out)
    y = np.r_[np.ones(len(mi_in)), np.zeros(len(mi_out))]
    expected = sklearn_metrics.roc_auc_score(y, -np.r_[mi_in, mi_out])
    assert by_score["mutual-information"]["auroc"] == pytest.approx(expected, abs=1e-12)


def test_selective_epistemic_score_needs_members(samples):
    paths = [samples / f"digits_{k}.pt2" for k in ("hard", "sam")]
    ok = invoke("selective", "--ensemble", *paths, "--data", samples / "digits_test.npz", "--score",
                "msp,mutual-information,disagreement", "--json")
    assert ok.exit_code == 0, ok.stderr
    assert "mutual-information" in ok.stdout and "disagreement" in ok.stdout
    line = one_line_error(invoke("selective", paths[0], "--data", samples / "digits_test.npz", "--score", "mi"))
    assert "--ensemble" in line and "--mc-dropout" in line


def test_bad_input_exits_2(samples, tmp_path):
    data = samples / "digits_test.npz"
    pair = (samples / "digits_hard.pt2", samples / "digits_ls.pt2")
    # the predictive logits are log p̄: logsumexp = 0 for every input, so the energy score would rank noise
    assert "logsumexp is 0" in one_line_error(invoke("ood", "--ensemble", *pair, "--data", data, "--ood-data", data,
                                                     "--score", "msp,energy"))
    assert "logsumexp is 0" in one_line_error(invoke("selective", "--ensemble", *pair, "--data", data, "--score",
                                                     "energy"))
    assert "one network's features" in one_line_error(invoke("ood", "--ensemble", *pair, "--data", data, "--ood-data",
                                                             data, "--score", "mahalanobis", "--train",
                                                             samples / "digits_train.npz"))
    assert "--ensemble" in one_line_error(invoke("ood", samples / "digits_hard.pt2", samples / "digits_ls.pt2",
                                                 "--data", data, "--ood-data", data))
    assert "torch.export" in one_line_error(invoke("ece", "--mc-dropout", "2", samples / "digits_hard.pt2",
                                                   "--data", data))
    assert "has none" in one_line_error(invoke("temperature", "--mc-dropout", "2",
                                               samples / "digits_hard.safetensors", "--data", data))
    assert "≥ 1" in one_line_error(invoke("ece", "--mc-dropout", "0", samples / "digits_hard.safetensors",
                                          "--data", data))
    np.savez(tmp_path / "five.npz", logits=np.zeros((1347, 5), np.float32), labels=np.zeros(1347, np.int64))
    assert "disagree" in one_line_error(invoke("ece", "--ensemble", samples / "digits_hard_test_logits.npz",
                                               tmp_path / "five.npz"))


def test_compare_ensemble_adds_a_column(samples):
    from calibscope.cli import report as report_cli

    local = typer.Typer(pretty_exceptions_enable=False)
    local.command(name="compare")(report_cli.compare)
    paths = [samples / "digits_hard.safetensors", samples / "digits_sam.safetensors"]
    result = runner.invoke(local, ["--ensemble", *map(str, paths), "--data", str(samples / "digits_test.npz"),
                                   "--train", str(samples / "digits_train.npz"), "--sections",
                                   "calibration,projection", "--bootstrap", "0", "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    name = "ensemble(digits_hard.safetensors,digits_sam.safetensors)"
    assert [m["name"] for m in doc["models"]] == ["digits_hard.safetensors", "digits_sam.safetensors", name]
    sections = {s["key"]: s for s in doc["sections"]}
    entry = [r for r in sections["calibration"]["document"]["results"] if r["name"] == name][0]
    s = Session(samples / "digits_test.npz")
    mean = _np_softmax(np.stack([s.outputs(p)[0].logits.numpy() for p in paths])).mean(0)
    y = np.load(samples / "digits_test.npz")["labels"]
    assert entry["nll"] == pytest.approx(-np.log(mean[np.arange(len(y)), y]).mean(), rel=1e-12)
    assert sections["projection"]["notes"] == [f"{name} averages several networks: the projection reads its "
                                               "penultimate layer"]


def test_calibrate_ensemble_writes_a_calibrator_not_a_model(samples, tmp_path):
    from calibscope.cli import calibrate as calibrate_cli

    local = typer.Typer(pretty_exceptions_enable=False)
    local.command(name="calibrate")(calibrate_cli.calibrate)
    pair = [str(samples / "digits_hard.safetensors"), str(samples / "digits_sam.safetensors")]
    val = str(samples / "digits_val.npz")
    bad = runner.invoke(local, ["--ensemble", *pair, "--val", val, "-o", str(tmp_path / "cal.pt2")])
    assert "has no model to append the calibrator to" in one_line_error(bad)
    assert not (tmp_path / "cal.pt2").exists()
    ok = runner.invoke(local, ["--ensemble", *pair, "--val", val, "--methods", "temperature", "-o",
                               str(tmp_path / "cal.json"), "--json"])
    assert ok.exit_code == 0, ok.stderr
    from scipy.optimize import minimize_scalar

    val_data = np.load(samples / "digits_val.npz")
    s = Session(samples / "digits_val.npz")
    log_mean = np.log(_np_softmax(np.stack([s.outputs(p)[0].logits.numpy() for p in pair])).mean(0))
    y = val_data["labels"]

    def nll(t):
        z = log_mean / t
        z = z - z.max(1, keepdims=True)
        return -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1))).mean()
    expected = minimize_scalar(nll, bounds=(0.05, 20), method="bounded", options={"xatol": 1e-10}).x
    saved = json.loads((tmp_path / "cal.json").read_text())
    assert saved["parameters"]["temperature"] == pytest.approx(expected, rel=1e-6)


def test_report_of_an_ensemble(samples):
    from calibscope.cli import report as report_cli

    local = typer.Typer(pretty_exceptions_enable=False)
    local.command(name="report")(report_cli.report)
    pair = [str(samples / "digits_hard.pt2"), str(samples / "digits_sam.pt2")]
    data = ["--data", str(samples / "digits_test.npz"), "--train", str(samples / "digits_train.npz"), "--sections",
            "calibration,mi", "--bootstrap", "0", "--json"]
    assert "--ensemble" in one_line_error(runner.invoke(local, [*pair, *data]))
    ok = runner.invoke(local, ["--ensemble", *pair, *data])
    assert ok.exit_code == 0, ok.stderr
    doc = json.loads(ok.stdout)
    name = "ensemble(digits_hard.pt2,digits_sam.pt2)"
    assert [m["name"] for m in doc["models"]] == [name]
    sections = {s["key"]: s for s in doc["sections"]}
    assert sections["mi"]["status"] == "skipped"
    assert sections["mi"]["note"] == f"{name} averages several networks: MI runs the model on augmented inputs"
    (entry,) = sections["calibration"]["document"]["results"]
    s = Session(samples / "digits_test.npz")
    mean = _np_softmax(np.stack([s.outputs(p)[0].logits.numpy() for p in pair])).mean(0)
    y = np.load(samples / "digits_test.npz")["labels"]
    assert entry["accuracy"] == pytest.approx((mean.argmax(1) == y).mean(), abs=1e-15)
