"""`calibscope report` and `calibscope compare` end to end on the sample digits models.

The numbers shown in the page (read back from its ``data-value`` attributes) must equal those the individual
commands print with ``--json`` for the same inputs and settings; sections without their inputs are skipped
with a note; interrupting the run leaves no file; bad input exits 2 with one line and writes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from calibscope.cli import calibrate as calibrate_cli
from calibscope.cli import distill as distill_cli
from calibscope.cli import ece as ece_cli
from calibscope.cli import hessian as hessian_cli
from calibscope.cli import mi as mi_cli
from calibscope.cli import ood as ood_cli
from calibscope.cli import project as project_cli
from calibscope.cli import report as report_cli
from calibscope.cli import selective as selective_cli
from calibscope.cli import temperature as temperature_cli

SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"
TEST, VAL, TRAIN = (str(SAMPLES / f"digits_{s}.npz") for s in ("test", "val", "train"))
MODELS = {m: str(SAMPLES / f"digits_{m}.safetensors") for m in ("hard", "ls", "sam")}

# every command on one local app, independent of their registration in calibscope.cli
app = typer.Typer(pretty_exceptions_enable=False)
for _name, _fn in (("ece", ece_cli.ece), ("temperature", temperature_cli.temperature),
                   ("selective", selective_cli.selective), ("ood", ood_cli.ood), ("project", project_cli.project),
                   ("mi", mi_cli.mi), ("hessian", hessian_cli.hessian), ("report", report_cli.report),
                   ("compare", report_cli.compare), ("calibrate", calibrate_cli.calibrate),
                   ("distill", distill_cli.distill)):
    app.command(name=_name)(_fn)
runner = CliRunner()

# small settings shared by the report and the commands it is compared with
MI = ["--mi-examples", "8", "--mi-shift", "1", "--mi-no-flip"]
HESSIAN = ["--hessian-examples", "40", "--hessian-top", "3"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def command_json(*args) -> dict:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, (args, result.output)
    return json.loads(result.stdout)


class _PageValues(HTMLParser):
    """(data-key, data-model) → float(data-value), and data-key → text, of every number in a page."""

    def __init__(self):
        super().__init__()
        self.values: dict[tuple[str, str | None], float] = {}
        self.text: dict[tuple[str, str | None], str] = {}
        self.sections: dict[str, str] = {}
        self._open: tuple[str, str | None] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "data-section" in a:
            self.sections[a["data-section"]] = a["data-status"]
        if "data-key" in a:
            key = (a["data-key"], a.get("data-model"))
            if a.get("data-value") not in (None, ""):
                self.values[key] = float(a["data-value"])
            self._open = key
            self.text[key] = ""

    def handle_data(self, data):
        if self._open is not None:
            self.text[self._open] += data

    def handle_endtag(self, tag):
        self._open = None


def page(path: Path) -> _PageValues:
    parser = _PageValues()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread while this module runs: on a shared 2-core machine, two torch threads that wait for
    each other crawl whenever another process holds a core (the Hessian's double backward went from 1 s to
    20 s); one thread keeps the time steady. The numbers compared are all computed under the same setting."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


_PAGES: dict = {}


def sample_pages(tmp_path_factory) -> dict:
    """Built once per test session and shared with tests/browser: the LS model's full report (HTML and the JSON
    of the same run) and the compare page of all three models, every section computed with small settings, and
    the OOD set they use (the test digits with their pixels permuted image by image)."""
    if not _PAGES:
        root = tmp_path_factory.mktemp("sample_pages")
        images = np.load(TEST)["images"][:300]
        g = np.random.default_rng(0)
        flat = images.reshape(len(images), -1)
        ood = root / "shuffled.npz"
        np.savez(ood, images=np.stack([r[g.permutation(64)] for r in flat]).reshape(images.shape))
        common = ["--data", TEST, "--val", VAL, "--train", TRAIN, "--ood-data", ood, *MI, *HESSIAN]
        report_doc = command_json("report", MODELS["ls"], *common, "--bootstrap", "200", "--max-ece", "0.2",
                                  "-o", root / "report.html")
        result = invoke("compare", *MODELS.values(), *common, "--bootstrap", "0", "--max-ece", "0.05", "--json",
                        "-o", root / "compare.html")
        assert result.exit_code == 1, result.output  # LS fails --max-ece 0.05, after the page is written
        assert "gate failed: digits_ls.safetensors ECE 0.1697 > --max-ece 0.05" in result.stderr
        _PAGES.update(ood=ood, report=root / "report.html", report_doc=report_doc, compare=root / "compare.html",
                      compare_doc=json.loads(result.stdout))
    return _PAGES


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict:
    return sample_pages(tmp_path_factory)


def test_report_numbers_equal_each_commands_json(pages):
    path, shuffled = pages["report"], pages["ood"]
    p = page(path)
    name = Path(MODELS["ls"]).name
    assert set(p.sections.values()) == {"ok"} and len(p.sections) == 13

    def shown(key):
        return p.values[(key, name)]

    ece = command_json("ece", MODELS["ls"], "--data", TEST, "--bootstrap", "200", "--seed", "0")["results"][0]
    for metric, entry in ece["metrics"].items():
        assert shown(f"calibration.{metric}") == entry["value"], metric
    assert shown("summary.ece") == ece["metrics"]["ece"]["value"] == ece["ece"]
    assert shown("summary.accuracy") == ece["accuracy"]
    interval = ece["metrics"]["ece"]["interval"]
    assert p.text[("summary.ece", name)] == f"{ece['ece']:.4f} [{interval['low']:.4f}, {interval['high']:.4f}]"
    for m, count in enumerate(ece["bins"]["count"]):
        assert shown(f"calibration.bins.count.{m + 1}") == count

    t = command_json("temperature", MODELS["ls"], "--data", VAL, "--apply", TEST)
    assert shown("temperature.temperature") == shown("summary.temperature") == t["temperature"]
    assert shown("temperature.ece_temperature") == t["fits"]["ece"]["temperature"]
    for when in ("before", "after"):
        for metric in ("ece", "nll", "brier", "signed_ce"):
            assert shown(f"temperature.{when}.{metric}") == t["apply"][when][metric]["value"], (when, metric)
    assert shown("summary.ece_after_temperature") == t["apply"]["after"]["ece"]["value"]

    s = command_json("selective", MODELS["ls"], "--data", TEST)["results"][0]
    for key in ("aurc", "excess_aurc", "aurc_optimal", "accuracy"):
        assert shown(f"selective.{key}") == s[key]
    for point in s["at_coverage"]:
        assert shown(f"selective.accuracy_at.{point['target_coverage']:g}") == point["accuracy"]

    o = command_json("ood", MODELS["ls"], "--data", TEST, "--ood-data", shuffled, "--train", TRAIN)
    assert [r["score"] for r in o["results"]] == ["msp", "max-logit", "energy", "mahalanobis"]
    for r in o["results"]:
        for key in ("auroc", "aupr_in", "aupr_out", "fpr_at_tpr"):
            assert shown(f"ood.{r['score']}.{key}") == r["metrics"][key], (r["score"], key)
    assert shown("summary.ood_auroc") == o["results"][0]["metrics"]["auroc"]

    pr = command_json("project", MODELS["ls"], "--data", TRAIN, "--val", VAL)["results"][0]
    for split in pr["splits"]:
        for key in ("relative_spread_plane", "relative_spread_full", "equidistance_plane"):
            assert shown(f"projection.{split['split']}.{key}") == split["statistics"][key]

    mi = command_json("mi", MODELS["ls"], "--data", TRAIN, "--classes", "1,2", "--examples", "8", "--shift", "1",
                      "--no-flip")
    assert [c["index"] for c in mi["classes"]] == [1, 2]  # the report's default: the projection's first two
    assert shown("mi.nats") == mi["results"][0]["nats"] and shown("mi.sigma2") == mi["results"][0]["sigma2"]

    h = command_json("hessian", MODELS["ls"], "--data", TRAIN, "--examples", "40", "--top", "3")["results"][0]
    for i, value in enumerate(h["eigenvalues"]):
        assert shown(f"hessian.lambda{i + 1}") == value
    assert shown("summary.lambda1") == h["eigenvalues"][0] and shown("hessian.ratio") == h["ratio"]
    assert shown("hessian.trace") == h["trace"]["trace"]

    corp = command_json("ece", MODELS["ls"], "--data", TEST, "--corp", "--seed", "0")["results"][0]["corp"]
    for score in ("brier", "log"):
        for key in ("score", "miscalibration", "discrimination", "uncertainty"):
            assert shown(f"corp.{score}.{key}") == corp[score][key], (score, key)
    assert shown("corp.outside_band") == corp["outside_band"] and shown("corp.distinct") == len(corp["x"])

    cal = command_json("calibrate", MODELS["ls"], "--val", VAL, "--test", TEST, "--methods", "all", "--seed", "0")
    assert len(cal["methods"]) == 7  # the uncalibrated logits and six methods (Platt and beta need K = 2)
    for entry in cal["methods"]:
        for key in ("ece", "sce", "nll", "brier", "accuracy_change"):
            assert shown(f"calibrate.{entry['method']}.{key}") == entry["metrics"][key], (entry["method"], key)

    d = command_json("distill", MODELS["ls"], "--data", TEST)
    (teacher,) = d["teachers"].values()
    for profile in teacher["profiles"]:
        for key in ("non_target_entropy_normalised", "non_target_information", "off_true_mass"):
            assert shown(f"distill.T{profile['temperature']:g}.{key}") == profile[key]
    assert shown("distill.ece") == teacher["ece"] and shown("distill.pair") == teacher["similar_pairs"][0][2]


def test_json_is_the_same_content(pages):
    path, doc = pages["report"], pages["report_doc"]
    assert doc["schema"] == "calibscope/report" and doc["meta"]["command"] == "report"
    p = page(path)
    name = doc["models"][0]["name"]
    for row in doc["summary"]["rows"]:
        if row["key"] != "verdict":
            assert p.values[(f"summary.{row['key']}", name)] == row["values"][0], row["key"]
    by_key = {s["key"]: s for s in doc["sections"]}
    assert list(by_key) == ["calibration", "corp", "temperature", "calibrate", "selective", "conformal", "ood",
                            "projection", "mi", "hessian", "distill"]
    assert by_key["corp"]["document"]["results"][0]["corp"]["band_resamples"] == 200
    assert [d["schema"] for d in by_key["calibrate"]["document"]] == ["calibscope/calibrate"]
    assert by_key["distill"]["document"]["schema"] == "calibscope/distill"
    assert by_key["calibration"]["document"]["schema"] == "calibscope/ece"
    assert by_key["hessian"]["document"]["schema"] == "calibscope/hessian"
    assert [d["schema"] for d in by_key["temperature"]["document"]] == ["calibscope/temperature"]
    ece = by_key["calibration"]["document"]["results"][0]["metrics"]["ece"]
    assert ece["value"] == p.values[("calibration.ece", name)] and ece["interval"]["replicates"] == 200
    roles = [i["role"] for i in doc["provenance"]["inputs"]]
    assert roles[1:] == ["test data", "validation data", "training data", "OOD data"]
    assert all(len(i["sha256"]) == 64 for i in doc["provenance"]["inputs"])
    assert doc["provenance"]["versions"]["torch"]
    assert doc["verdict"]["passed"] is True and doc["verdict"]["thresholds"]["max_ece"] == 0.2


def test_compare_numbers_equal_the_multi_checkpoint_commands(pages):
    paths = list(MODELS.values())
    p = page(pages["compare"])
    assert set(p.sections.values()) == {"ok"} and len(p.sections) == 13
    assert pages["compare_doc"]["verdict"]["passed"] is False
    ece = command_json("ece", *paths, "--data", TEST)["results"]
    proj = command_json("project", *paths, "--data", TRAIN, "--val", VAL)
    classes = ",".join(str(c["index"]) for c in proj["classes"][:2])
    mi = command_json("mi", *paths, "--data", TRAIN, "--classes", classes, "--examples", "8", "--shift", "1",
                      "--no-flip")["results"]
    hess = command_json("hessian", *paths, "--data", TRAIN, "--examples", "40", "--top", "3")["results"]
    for i, path in enumerate(paths):
        name = Path(path).name
        assert ece[i]["name"] == proj["results"][i]["name"] == mi[i]["name"] == hess[i]["name"] == name
        assert p.values[("calibration.ece", name)] == ece[i]["ece"]
        assert p.values[("calibration.nll", name)] == ece[i]["metrics"]["nll"]["value"]
        val_split = proj["results"][i]["splits"][1]
        assert p.values[("projection.val.relative_spread_plane", name)] == \
            val_split["statistics"]["relative_spread_plane"]
        assert p.values[("mi.nats", name)] == mi[i]["nats"]
        assert p.values[("hessian.lambda1", name)] == hess[i]["eigenvalues"][0]
    distill = command_json("distill", *paths, "--data", TEST)  # the first model as the teacher of the others
    for student in distill["students"]:
        for key in ("distillation_loss", "kl_at_1", "agreement"):
            assert p.values[(f"distill.{key}", student["student"])] == student[key]
    everyone = command_json("distill", *paths, "--data", TEST, "--teachers", "3")["teachers"]
    for name, teacher in everyone.items():
        assert p.values[("distill.T1.non_target_information", name)] == teacher["profiles"][0][
            "non_target_information"]
    # what the samples show (sample_checkpoints/README.md): LS is the least calibrated; SAM is flatter than SGD
    names = [Path(x).name for x in paths]
    assert p.values[("calibration.ece", names[1])] > p.values[("calibration.ece", names[0])]
    assert p.values[("hessian.lambda1", names[2])] < p.values[("hessian.lambda1", names[0])]


def test_missing_inputs_skip_sections_with_a_visible_note(tmp_path):
    logits = SAMPLES / "digits_hard_test_logits.npz"
    out = tmp_path / "r.html"
    result = invoke("report", logits, "--train", TRAIN, "--bootstrap", "0", "--figures", "svg", "-o", out)
    assert result.exit_code == 0, result.output
    p = page(out)
    assert p.sections == {"summary": "ok", "calibration": "ok", "corp": "ok", "temperature": "ok",
                          "calibrate": "skipped", "selective": "ok", "conformal": "skipped", "ood": "skipped",
                          "projection": "skipped", "mi": "skipped", "hessian": "skipped", "distill": "ok",
                          "provenance": "ok"}
    text = out.read_text(encoding="utf-8")
    assert "Skipped: no --ood-data given" in text
    assert "Skipped: no --val given (the calibrators are fitted on validation data" in text
    assert "Skipped: digits_hard_test_logits.npz is a logits file: the Hessian needs the parameters" in text
    assert "skipped out-of-distribution detection" in result.stdout

    doc = command_json("report", SAMPLES / "digits_ls.safetensors", "--data", TEST, "--bootstrap", "0",
                       "--sections", "calibration,mi,hessian")
    by_key = {s["key"]: s for s in doc["sections"]}
    assert list(by_key) == ["calibration", "mi", "hessian"]
    assert by_key["mi"]["status"] == "skipped" and by_key["mi"]["note"].startswith("no --train given")
    assert by_key["hessian"]["document"] is None and by_key["calibration"]["status"] == "ok"


def test_threshold_fails_after_the_page_is_written(tmp_path):
    out = tmp_path / "gate.html"
    result = invoke("compare", MODELS["hard"], MODELS["ls"], "--data", TEST, "--bootstrap", "0",
                    "--sections", "calibration", "--max-ece", "0.05", "--figures", "svg", "-o", out)
    assert result.exit_code == 1, result.output
    assert "gate failed: digits_ls.safetensors ECE 0.1697 > --max-ece 0.05" in result.stderr
    p = page(out)
    assert p.values[("summary.verdict", "digits_hard.safetensors")] == 1
    assert p.values[("summary.verdict", "digits_ls.safetensors")] == 0
    ok = invoke("report", MODELS["hard"], "--data", TEST, "--bootstrap", "0", "--sections", "calibration",
                "--max-ece", "0.05", "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["verdict"]["passed"] is True


@pytest.mark.parametrize("where", ["rendering", "writing"])
def test_interrupt_leaves_no_report(tmp_path, monkeypatch, where):
    from calibscope.render import atomic, report_html

    out = tmp_path / "report.html"
    calls = {"n": 0}
    if where == "rendering":  # the second figure of the page
        original = report_html.FigureEmbedder.html

        def html(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return original(self, *args, **kwargs)
        monkeypatch.setattr(report_html.FigureEmbedder, "html", html)
    else:  # the page is in the temporary file, not yet renamed onto report.html
        def fsync(path):
            calls["n"] += 1
            assert Path(path).stat().st_size > 10_000
            raise KeyboardInterrupt
        monkeypatch.setattr(atomic, "_fsync", fsync)
    sections = "calibration,temperature" if where == "rendering" else "calibration"
    args = ["report", MODELS["hard"], "--data", TEST, "--bootstrap", "0", "--sections", sections, "--figures", "svg",
            "-o", out]
    result = invoke(*args)
    assert result.exit_code == 130 and "interrupted" in result.stderr and calls["n"] >= 1
    assert list(tmp_path.iterdir()) == []  # no report, no temporary file
    # an earlier report survives an interrupted run untouched
    out.write_text("earlier report", encoding="utf-8")
    calls["n"] = 0
    assert invoke(*args).exit_code == 130
    assert out.read_text(encoding="utf-8") == "earlier report" and list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize("args, message", [
    (["compare", MODELS["hard"], "--data", TEST], "compare needs at least two checkpoints"),
    (["report", MODELS["hard"], "--data", TEST, "--bootstrap", "10"], "--bootstrap needs at least 200"),
    (["report", MODELS["hard"], "--data", TEST, "--sections", "calibration,plots"], "unknown section 'plots'"),
    (["report", MODELS["hard"], "--data", TEST, "--figures", "gif"], "--figures must be auto, svg or png"),
    (["report", MODELS["hard"], "--data", TEST, "--max-lambda1", "1"], "--max-lambda1 needs the Hessian section"),
    (["report", MODELS["hard"], "--data", "missing.npz"], "--data 'missing.npz' does not exist"),
    (["report", MODELS["hard"], "--data", TEST, "-o", "no/such/folder/r.html"], "the folder 'no/such/folder'"),
    (["report", MODELS["hard"], "--data", TEST, "--mi-draws", "1"], "--mi-draws must be at least 2"),
])
def test_bad_input_exits_2_with_one_line_and_no_file(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = invoke(*args)
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("calibscope: error: ") and message in lines[0], lines
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


def test_help_imports_no_heavy_module():
    code = ("import sys, typer\nfrom calibscope.cli import report\napp = typer.Typer()\n"
            "app.command(name='report')(report.report)\napp.command(name='compare')(report.compare)\n"
            "for argv in (['report', '--help'], ['compare', '--help']):\n"
            "    try:\n        app(argv)\n    except SystemExit as e:\n        assert e.code in (0, None)\n"
            "print('HEAVY=' + ','.join(m for m in ('torch', 'matplotlib', 'numpy', 'scipy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "120"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("HEAVY="), result.stdout[-300:]
    assert "--sections" in result.stdout and "--max-ece" in result.stdout
