"""`calibscope --help` must answer at once: no torch, matplotlib or scipy imported for help."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "matplotlib", "scipy", "numpy", "safetensors")


def _commands() -> list[str]:
    from calibscope.cli import app

    return [c.name for c in app.registered_commands]


@pytest.mark.parametrize("argv", [["--help"], ["--version"]] + [[name, "--help"] for name in _commands()])
def test_help_imports_no_heavy_module(argv):
    code = (
        "import sys\n"
        "from calibscope.cli import app\n"
        f"try:\n    app({argv!r})\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "HEAVY=\n" in result.stdout or result.stdout.rstrip().endswith("HEAVY="), result.stdout[-500:]


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "calibscope", "--version"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("calibscope ")
