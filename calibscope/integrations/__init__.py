"""Where users already are: training loops and experiment trackers.

* :mod:`calibscope.integrations.torchmetrics` — :class:`CalibscopeECE`, a ``torchmetrics.Metric``;
* :mod:`calibscope.integrations.lightning` — :class:`CalibrationCallback` for Lightning's ``Trainer``;
* :mod:`calibscope.integrations.huggingface` — :class:`CalibrationCallback` for Hugging Face's ``Trainer``;
* :mod:`calibscope.render.trackers` — TensorBoard and MLflow writers for ``--log`` and the callbacks.

Each module imports its framework when it is imported itself: ``import calibscope.integrations`` costs nothing,
and a framework that is not installed gives one clear :class:`~calibscope.errors.InputError`.
"""

from __future__ import annotations

from calibscope.optional import EXTRAS, require

__all__ = ["EXTRAS", "require"]
