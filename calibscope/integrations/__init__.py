"""Where users already are: training loops and experiment trackers.

* :mod:`calibscope.integrations.torchmetrics` — :class:`CalibscopeECE`, a ``torchmetrics.Metric``;
* :mod:`calibscope.integrations.lightning` — :class:`CalibrationCallback` for Lightning's ``Trainer``;
* :mod:`calibscope.integrations.huggingface` — :class:`CalibrationCallback` for Hugging Face's ``Trainer``;
* :mod:`calibscope.integrations.trackers` — TensorBoard and MLflow writers for ``--log`` and the callbacks.

Each module imports its framework when it is imported itself: ``import calibscope.integrations`` costs nothing,
and a framework that is not installed gives one clear :class:`~calibscope.errors.InputError`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from calibscope.errors import InputError

# the optional extra that installs each framework (pyproject.toml [project.optional-dependencies])
EXTRAS = {"torchmetrics": "lightning", "lightning": "lightning", "transformers": "hf", "tensorboard": "tracking",
          "mlflow": "tracking"}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise one line saying which package (and calibscope extra) provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = EXTRAS.get(top)
        hint = f" (pip install 'calibscope[{extra}]' or pip install {top})" if extra else f" (pip install {top})"
        raise InputError(f"{purpose} needs the package `{top}`, which is not installed{hint}") from exc
