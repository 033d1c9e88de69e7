"""Optional packages: import one or raise one line saying which package (and calibscope extra) provides it."""

from __future__ import annotations

import importlib
from types import ModuleType

from calibscope.errors import InputError

# the optional extra that installs each package (pyproject.toml [project.optional-dependencies])
EXTRAS = {"torchmetrics": "lightning", "lightning": "lightning", "transformers": "hf", "tensorboard": "tracking",
          "mlflow": "tracking"}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module``; if it is missing raise :class:`InputError`: "PURPOSE needs the package `X`, which is
    not installed (pip install 'calibscope[EXTRA]' or pip install X)"."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = EXTRAS.get(top)
        hint = f"pip install 'calibscope[{extra}]' or pip install {top}" if extra else f"pip install {top}"
        raise InputError(f"{purpose} needs the package `{top}`, which is not installed ({hint})") from exc
