"""The one-way flow of the architecture (README, "Layout"), checked on the source: cli → loading, inference,
diagnostics, render; diagnostics imports none of them (pure math on tensors); loading knows no metric; render
only reads results."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "calibscope"

FORBIDDEN = {
    "diagnostics": {"cli", "loading", "inference", "render"},
    "loading": {"cli", "inference", "diagnostics", "render"},
    "inference": {"cli", "diagnostics", "render"},
    "render": {"cli", "loading", "inference"},
    "integrations": {"cli"},  # training-loop callbacks and trackers: below the command line
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("calibscope."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("calibscope.")}
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downstream(layer):
    offences = {str(p.relative_to(PACKAGE)): sorted(_imports(p) & FORBIDDEN[layer])
                for p in sorted((PACKAGE / layer).glob("*.py"))}
    assert not {k: v for k, v in offences.items() if v}, offences
