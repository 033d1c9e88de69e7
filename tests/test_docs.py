"""docs/cli.md and docs/api.md are generated (``make docs``); the committed files must be what the generators
write now, so the reference cannot drift from the code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_in_sync(tmp_path):
    out = tmp_path / "cli.md"
    subprocess.run([sys.executable, "-m", "typer", "calibscope.cli", "utils", "docs", "--name", "calibscope",
                    "--output", str(out)], check=True, capture_output=True, cwd=ROOT, timeout=120,
                   env={**os.environ, "COLUMNS": "120"})
    assert out.read_text(encoding="utf-8") == (ROOT / "docs" / "cli.md").read_text(encoding="utf-8"), \
        "docs/cli.md is out of date: run `make docs`"


def test_api_reference_is_in_sync():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "api_docs.py")], check=True,
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.stdout == (ROOT / "docs" / "api.md").read_text(encoding="utf-8"), \
        "docs/api.md is out of date: run `make docs`"


def test_help_has_no_internal_placeholders():
    """No `<bool>` on flags, no Python types (`<list[Path]>`), no `{checkpoints}`, no stray ' .'."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for bad in ("<bool>", "list[", "{checkpoint", " .\n", " . "):
        assert bad not in text, bad
