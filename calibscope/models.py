"""Small architectures that ship with calibscope (used by the sample checkpoints and the tests).

They are ordinary ``nn.Module`` factories, so a safetensors file can name them in its metadata
(``calibscope.arch = "calibscope.models:DigitsCNN"``) and be loaded without ``--trust``.
"""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """A small CNN for 1×8×8 images (the UCI handwritten digits).

    conv3×3(1→c) → ReLU → conv3×3(c→2c) → ReLU → maxpool 2 → flatten → linear(2c·16 → hidden) → ReLU
    → linear(hidden → num_classes). The last layer is ``self.classifier``; its input is the penultimate
    activation used by the plane projections (Müller et al. 2019 §2). ``dropout`` > 0 puts an
    ``nn.Dropout(dropout)`` before the classifier (``self.dropout``; an ``nn.Identity`` otherwise, so the
    state_dict is the same either way), for MC-dropout (``calibscope ece --mc-dropout N``).
    """

    def __init__(self, num_classes: int = 10, channels: int = 32, hidden: int = 128, in_channels: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * channels * 16, hidden),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))


class MLP(nn.Module):
    """A multilayer perceptron for tabular data: ``in_features → hidden (ReLU) … → num_classes``."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] | list[int] = (64,)):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.flatten(1)))
