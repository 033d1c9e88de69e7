"""Architecture specs: the four forms, their error messages, and the --trust rule for specs read from files."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from calibscope.errors import InputError, UntrustedFileError
from calibscope.loading.arch import build_architecture, parse_arch_spec
from calibscope.models import DigitsCNN

NET_SOURCE = """
import torch


class Net(torch.nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.fc = torch.nn.Linear(3, width)

    def forward(self, x):
        return self.fc(x)


def not_a_module():
    return 42
"""


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / "mynet.py"
    path.write_text(NET_SOURCE)
    return path


def test_module_spec_with_kwargs():
    model = build_architecture("calibscope.models:DigitsCNN", {"num_classes": 3, "channels": 4})
    assert isinstance(model, DigitsCNN)
    assert model.classifier.out_features == 3


def test_file_spec(net_file):
    model = build_architecture(f"{net_file}:Net", {"width": 7})
    assert type(model).__name__ == "Net"
    assert model(torch.zeros(2, 3)).shape == (2, 7)


@pytest.mark.parametrize("spec", ["DigitsCNN", "calibscope.models:", ":DigitsCNN", "not a module:Net",
                                  "calibscope.models:Digits-CNN"])
def test_bad_syntax(spec):
    with pytest.raises(InputError, match="expected 'package.module:callable', 'path/to/file.py:Callable'"):
        build_architecture(spec)


def test_parse_kinds():
    assert parse_arch_spec("torchvision:resnet18").kind == "torchvision"
    assert parse_arch_spec("timm:vit_tiny_patch16_224").kind == "timm"
    assert parse_arch_spec("a/b/net.py:Net").kind == "file"
    assert parse_arch_spec("pkg.mod:Outer.build").name == "Outer.build"


def test_module_not_found():
    with pytest.raises(InputError, match="no module named 'no_such_package_xyz'"):
        build_architecture("no_such_package_xyz.models:Net")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        build_architecture(f"{tmp_path / 'absent.py'}:Net")


def test_attribute_missing_lists_what_exists():
    with pytest.raises(InputError, match="has no attribute 'DigitCNN'.*DigitsCNN"):
        build_architecture("calibscope.models:DigitCNN")


def test_kwargs_type_error_names_callable_and_kwarg():
    with pytest.raises(InputError) as info:
        build_architecture("calibscope.models:DigitsCNN", {"num_clases": 10})
    message = str(info.value)
    assert "calibscope.models:DigitsCNN" in message and "num_clases" in message
    assert "\n" not in message


def test_error_inside_constructor_is_one_line():
    with pytest.raises(InputError, match="calibscope.models:DigitsCNN") as info:
        build_architecture("calibscope.models:DigitsCNN", {"channels": "wide"})
    assert "\n" not in str(info.value)


def test_non_module_result(net_file):
    with pytest.raises(InputError, match="returned a int, not a torch.nn.Module"):
        build_architecture(f"{net_file}:not_a_module")


def test_kwargs_must_be_a_dict():
    with pytest.raises(InputError, match="JSON object"):
        build_architecture("calibscope.models:DigitsCNN", [10])  # type: ignore[arg-type]


@pytest.mark.parametrize("hub", ["torchvision", "timm"])
def test_hub_not_installed(hub):
    if importlib.util.find_spec(hub) is not None:
        pytest.skip(f"{hub} is installed")
    with pytest.raises(InputError, match=f"{hub} is not installed; pip install {hub} or use package.module:callable"):
        build_architecture(f"{hub}:resnet18")


# ---------------------------------------------------------------------------------------- specs from files


def test_from_file_allows_calibscope_modules():
    model = build_architecture("calibscope.models:DigitsCNN", {"num_classes": 4}, from_file=True)
    assert isinstance(model, DigitsCNN)


@pytest.mark.parametrize("spec", ["os:system", "subprocess:call", "builtins:eval"])
def test_from_file_refuses_other_modules(spec):
    with pytest.raises(UntrustedFileError) as info:
        build_architecture(spec, {"command": "echo hi"}, from_file=True)
    message = str(info.value)
    assert spec in message and "--trust" in message and "--arch" in message


def test_from_file_refuses_python_files_before_running_them(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.py"
    evil.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    with pytest.raises(UntrustedFileError, match="--trust"):
        build_architecture(f"{evil}:Net", from_file=True)
    assert not marker.exists()


def test_from_file_refuses_calibscope_functions():
    """Only nn.Module classes: a calibscope function called with file-chosen kwargs could do anything."""
    with pytest.raises(UntrustedFileError, match="not an nn.Module class"):
        build_architecture("calibscope.loading.arch:importlib.import_module", {"name": "os"}, from_file=True)


def test_trust_allows_anything(net_file):
    model = build_architecture(f"{net_file}:Net", from_file=True, trust=True)
    assert type(model).__name__ == "Net"
