"""find_defaults: calibscope.toml / [tool.calibscope] lookup, precedence, paths and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from calibscope.errors import InputError
from calibscope.loading.config import ProjectDefaults, find_defaults


def test_none_without_config(tmp_path: Path) -> None:
    assert find_defaults(tmp_path) is None
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert find_defaults(tmp_path) is None


def test_pyproject_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.calibscope]\ndata = "data/test.npz"\nlimit = 500\nbins = 10\n'
        'max_ece = 0.05\nmean = [0.5, 0.4, 0.3]\nstd = 0.25\ndevice = "cpu"\nprecision = "bf16"\n'
        "batch_size = 64\n"
    )
    d = find_defaults(tmp_path)
    assert d == ProjectDefaults(source=tmp_path / "pyproject.toml", data=tmp_path / "data" / "test.npz",
                                limit=500, batch_size=64, bins=10, max_ece=0.05, mean=(0.5, 0.4, 0.3),
                                std=(0.25,), device="cpu", precision="bf16")
    with pytest.raises(AttributeError):
        d.limit = 3  # type: ignore[misc]  # frozen


def test_calibscope_toml_wins(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.calibscope]\ndata = "a.npz"\nbins = 10\n')
    (tmp_path / "calibscope.toml").write_text('data = "../shared/b.npz"\n')
    d = find_defaults(tmp_path)
    assert d is not None and d.source == tmp_path / "calibscope.toml"
    assert d.data == tmp_path / ".." / "shared" / "b.npz" and d.bins is None  # not merged


def test_absolute_data_path_and_default_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "elsewhere" / "d.npz"
    (tmp_path / "calibscope.toml").write_text(f"data = '{target}'\n")
    monkeypatch.chdir(tmp_path)
    d = find_defaults()
    assert d is not None and d.data == target


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('data = "d.npz"\nbinz = 3\n', r"unknown key binz; allowed: data, .*bins"),
        ("limit = 0\n", "expected `limit` to be an integer larger than 0, but got 0"),
        ("bins = true\n", "expected `bins` to be an integer"),
        ('precision = "fp64"\n', "one of fp32, bf16, fp16"),
        ("max_ece = 2\n", "between 0 and 1"),
        ('mean = ["a"]\n', "a number or a list of numbers"),
        ("std = [0.5, 0]\n", "expected `std` to be positive"),
        ('data = ""\n', "non-empty string"),
    ],
)
def test_bad_values(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "calibscope.toml").write_text(text)
    with pytest.raises(InputError, match=message):
        find_defaults(tmp_path)


def test_unknown_key_in_pyproject_names_the_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.calibscope]\nepochs = 3\n")
    with pytest.raises(InputError, match=r"pyproject.toml' \[tool.calibscope\]: unknown key epochs"):
        find_defaults(tmp_path)


def test_malformed_toml_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "calibscope.toml").write_text('data = "d.npz"\nlimit = = 3\n')
    with pytest.raises(InputError, match=r"calibscope.toml' is not valid TOML: .*line 2"):
        find_defaults(tmp_path)
    (tmp_path / "calibscope.toml").unlink()
    (tmp_path / "pyproject.toml").write_text("[tool.calibscope\n")
    with pytest.raises(InputError, match=r"pyproject.toml' is not valid TOML: .*line 1"):
        find_defaults(tmp_path)
