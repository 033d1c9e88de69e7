"""docs/json-schema.md documents every field that `calibscope calibrate`, `calibscope distill`,
`calibscope landscape`, `calibscope project` and `calibscope ece --corp` write: each key of a real document (run
on the shipped test logits or sample models) appears as `key` in that document's
section, and the section states the schema version the document carries."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from calibscope.cli import app

ROOT = Path(__file__).resolve().parents[1]
LOGITS = ROOT / "sample_checkpoints" / "digits_hard_test_logits.npz"
HEADER = ("schema", "schema_version", "calibscope_version", "meta")


def _section(title: str) -> str:
    text = (ROOT / "docs" / "json-schema.md").read_text(encoding="utf-8")
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start:] if end < 0 else text[start:end]


def _documented(section: str) -> set[str]:
    return set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", section))


def _json(*args) -> dict:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _missing(keys, section: str) -> list[str]:
    known = _documented(section)
    return sorted(k for k in keys if k not in known and k not in HEADER)


def test_calibrate_document_and_calibrator_file_are_documented(tmp_path):
    doc = _json("calibrate", LOGITS, "--methods", "temperature,vector,histogram", "--bootstrap", "200", "--json",
                "-o", tmp_path / "cal.json")
    section = _section("## `calibscope/calibrate`, version 1")
    assert doc["schema"] == "calibscope/calibrate" and doc["schema_version"] == 1
    assert _missing(doc, section) == []
    for entry in doc["methods"]:
        assert _missing(entry, section) == [] and _missing(entry.get("metrics", {}), section) == []
        assert _missing(entry.get("fit") or {}, section) == []
    assert _missing(doc["fit_data"], section) == [] and _missing(doc["evaluation"], section) == []
    file = json.loads((tmp_path / "cal.json").read_text())
    assert file["format"] == "calibscope.calibrator" and file["version"] == 1
    assert "format version 1" in section
    assert _missing(file, section) == [] and _missing(file["fit"], section) == []
    assert _missing(file["parameters"], section) == [] and _missing(file["settings"], section) == []


@pytest.mark.parametrize("method", ["vector", "histogram", "isotonic", "matrix"])
def test_every_methods_parameters_are_documented(method, tmp_path):
    _json("calibrate", LOGITS, "--method", method, "--bootstrap", "0", "-o", tmp_path / "c.json", "--json")
    file = json.loads((tmp_path / "c.json").read_text())
    section = _section("## `calibscope/calibrate`, version 1")
    assert _missing(file["parameters"], section) == [] and _missing(file["settings"], section) == []


def test_distill_document_is_documented():
    doc = _json("distill", LOGITS, LOGITS, "--json")
    section = _section("## `calibscope/distill`, version 1")
    assert doc["schema"] == "calibscope/distill" and doc["schema_version"] == 1
    assert _missing(doc, section) == [] and _missing(doc["settings"], section) == []
    (teacher,) = doc["teachers"].values()
    assert _missing(teacher, section) == [] and _missing(teacher["profiles"][0], section) == []
    assert _missing(doc["students"][0], section) == []


def test_ece_corp_fields_are_documented():
    doc = _json("ece", LOGITS, "--corp", "--corp-resamples", "20", "--json")
    section = _section("### `corp` (with `--corp`; added in version 1)")
    corp = doc["results"][0]["corp"]
    assert doc["schema_version"] == 1
    assert _missing(corp, section) == [] and _missing(corp["brier"], section) == []
    assert _missing(corp["definition"], section) == []


SAMPLES = ROOT / "sample_checkpoints"


def test_landscape_document_is_documented():
    doc = _json("landscape", SAMPLES / "digits_hard.pt2", SAMPLES / "digits_sam.pt2", "--data",
                SAMPLES / "digits_train.npz", "--steps", "3", "--line-steps", "3", "--json")
    section = _section("## `calibscope/landscape`, version 1")
    assert doc["schema"] == "calibscope/landscape" and doc["schema_version"] == 1
    assert _missing(doc, section) == []
    assert _missing(doc["surface"], section) == [] and _missing(doc["line"], section) == []
    assert _missing(doc["definition"], section) == []


def test_projection_document_with_the_paper_layout_is_documented():
    doc = _json("project", SAMPLES / "digits_hard.pt2", "--data", SAMPLES / "digits_train.npz",
                "--paper-layout", "--json")
    section = _section("## `calibscope/projection`, version 1")
    assert doc["schema"] == "calibscope/projection" and doc["schema_version"] == 1
    assert doc["layout"] == "paper" and doc["rows"]
    assert _missing(doc, section) == [] and _missing(doc["rows"][0], section) == []
    assert _missing(doc["results"][0], section) == [] and _missing(doc["results"][0]["splits"][0], section) == []
    assert _missing(doc["definition"], section) == []
