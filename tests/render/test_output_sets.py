"""A command that fails leaves no output behind; one that succeeds publishes its whole output set."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from typer.testing import CliRunner

from calibscope.cli import app
from calibscope.errors import InputError
from calibscope.render import atomic
from tests.hostile import SAMPLES

LOGITS = str(SAMPLES / "digits_hard_test_logits.npz")


def invoke(args):
    return CliRunner().invoke(app, args)


def leftovers(folder):
    return sorted(p.name for p in folder.rglob("*"))


def test_failing_junit_leaves_no_figures(tmp_path):
    out = tmp_path / "figs"
    result = invoke(["ece", LOGITS, "--out", str(out), "--junit", str(tmp_path / "nodir" / "j.xml")])
    assert result.exit_code == 2 and "nodir" in result.stderr
    assert not out.exists(), leftovers(tmp_path)
    assert leftovers(tmp_path) == []


def test_success_publishes_the_whole_set(tmp_path):
    out = tmp_path / "figs"
    result = invoke(["ece", LOGITS, "--out", str(out), "--junit", str(tmp_path / "j.xml")])
    assert result.exit_code == 0, result.stderr
    names = leftovers(out)
    assert "ece.json" in names and any(n.endswith(".png") for n in names)
    assert not [n for n in names if n.endswith(".tmp")]
    assert (tmp_path / "j.xml").is_file()


def test_failed_gate_still_publishes_its_report(tmp_path):
    result = invoke(["ece", LOGITS, "--max-ece", "0.0001", "--junit", str(tmp_path / "j.xml")])
    assert result.exit_code == 1
    assert "failure" in (tmp_path / "j.xml").read_text()


@pytest.mark.parametrize("option", ["--junit", "--bins-csv"])
def test_file_options_naming_a_directory(tmp_path, option):
    folder = tmp_path / "adir"
    folder.mkdir()
    result = invoke(["ece", LOGITS, option, str(folder)])
    assert result.exit_code == 2 and "directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_save_temperature_naming_a_directory(tmp_path):
    result = invoke(["temperature", LOGITS, "--save-temperature", str(tmp_path)])
    assert result.exit_code == 2 and "directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_full_disk_leaves_no_png(tmp_path, monkeypatch):
    """ENOSPC on the JSON written after the figures: the whole set goes, the figures too."""
    real_open = open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "open", lambda p, mode="r", *a, **k: Full(real_open(p, mode, *a, **k))
                        if "w" in mode else real_open(p, mode, *a, **k), raising=False)
    out = tmp_path / "figs"
    result = invoke(["ece", LOGITS, "--out", str(out)])
    assert result.exit_code == 2 and "No space left on device" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert leftovers(tmp_path) == []


def test_read_only_report_destination(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    result = invoke(["report", LOGITS, "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and "Read-only file system" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_transactional_outputs_library_semantics(tmp_path):
    with atomic.transactional_outputs():
        atomic.make_folder(tmp_path / "a" / "b")
        atomic.atomic_write_text(tmp_path / "a" / "b" / "x.txt", "1")
    assert (tmp_path / "a" / "b" / "x.txt").read_text() == "1"
    with pytest.raises(RuntimeError), atomic.transactional_outputs():
        atomic.make_folder(tmp_path / "c" / "d")
        atomic.atomic_write_text(tmp_path / "c" / "d" / "y.txt", "2")
        atomic.atomic_write_text(tmp_path / "a" / "b" / "x.txt", "changed")
        raise RuntimeError("boom")
    assert not (tmp_path / "c").exists()
    assert (tmp_path / "a" / "b" / "x.txt").read_text() == "1"
    assert leftovers(tmp_path / "a") == ["b", "x.txt"]


def test_check_destination_and_folder(tmp_path):
    atomic.check_destination(tmp_path / "new.json", "--junit")
    with pytest.raises(InputError, match="is a directory"):
        atomic.check_destination(tmp_path, "--junit")
    with pytest.raises(InputError, match="does not exist"):
        atomic.check_destination(tmp_path / "no" / "x.json", "--junit")
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="not a folder"):
        atomic.check_folder(tmp_path / "file", "--out")
    atomic.check_folder(tmp_path / "new" / "deeper", "--out")


_SLOW_COMMAND = textwrap.dedent("""
    import sys, time
    from calibscope.cli._common import cli_errors
    from calibscope.render.atomic import atomic_write_text, make_folder
    out = sys.argv[1]

    def main():
        with cli_errors():
            make_folder(out)
            atomic_write_text(out + "/one.json", "1")
            print("WROTE", flush=True)
            time.sleep(60)
            atomic_write_text(out + "/two.json", "2")

    try:
        main()
    except SystemExit as exc:
        sys.exit(exc.code)
    except BaseException as exc:
        print(type(exc).__name__, exc.exit_code if hasattr(exc, "exit_code") else "", flush=True)
        sys.exit(getattr(exc, "exit_code", 99))
""")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_between_files_leaves_nothing(tmp_path, sig, code):
    out = tmp_path / "figs"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_COMMAND, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert proc.stdout.readline().strip() == "WROTE"
    time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert not out.exists(), leftovers(tmp_path)
    assert os.listdir(tmp_path) == []
