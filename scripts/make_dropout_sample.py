"""Build ``sample_checkpoints/digits_dropout.safetensors``: a small ``DigitsCNN`` with dropout, for MC-dropout.

The same data, split, normalisation and recipe as ``make_sample_checkpoints.py`` (hard targets, Adam lr 1e-3,
batch size 30, 200 epochs, seed 0, one CPU thread, deterministic algorithms), with a smaller network
(channels 16, hidden 64: 38k parameters, so the file stays under 200 kB) and ``nn.Dropout(0.5)`` before the
classifier, active during training. Saved as safetensors + arch metadata only: MC-dropout switches dropout
layers of an eager module, which ``.pt2`` and TorchScript exports cannot do. It reads the splits written by
``make_sample_checkpoints.py`` and changes no other file.

Usage: ``python scripts/make_dropout_sample.py [--dir sample_checkpoints]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sample_checkpoints import (  # noqa: E402 - the sibling script's helpers
    ARCH,
    BATCH_SIZE,
    DEFAULT_DIR,
    EPOCHS,
    LR,
    OPTIMISER,
    SEED,
    normalise,
    sort_safetensors_header,
    summarise,
)

from calibscope.models import DigitsCNN  # noqa: E402

NAME = "digits_dropout"
DROPOUT = 0.5  # chosen once (the usual value for a fully connected layer), not tuned
ARCH_KWARGS = {"num_classes": 10, "channels": 16, "hidden": 64, "in_channels": 1, "dropout": DROPOUT}
MAX_BYTES = 200_000


def train(x: torch.Tensor, y: torch.Tensor) -> DigitsCNN:
    torch.manual_seed(SEED)
    model = DigitsCNN(**ARCH_KWARGS)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=LR)
    batches = torch.Generator().manual_seed(SEED)
    for _ in range(EPOCHS):
        order = torch.randperm(len(y), generator=batches)
        for start in range(0, len(y), BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            optimiser.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimiser.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    directory: Path = parser.parse_args().dir
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    data = {s: np.load(directory / f"digits_{s}.npz") for s in ("train", "val", "test")}
    train_pixels = data["train"]["images"].astype(np.float64) / 255.0
    mean, std = float(train_pixels.mean()), float(train_pixels.std())
    x = {s: normalise(torch.from_numpy(d["images"]), mean, std) for s, d in data.items()}
    y = {s: torch.from_numpy(d["labels"]) for s, d in data.items()}
    model = train(x["train"], y["train"])
    names = [str(c) for c in data["train"]["class_names"]]
    recipe = {"loss": "cross_entropy", "alpha": 0.0, "rho": 0.0, "dropout": DROPOUT, "epochs": EPOCHS,
              "optimiser": OPTIMISER, "lr": LR, "batch_size": BATCH_SIZE, "weight_decay": 0.0, "augmentation": None,
              "seed": SEED, "n_train": len(y["train"]),
              "data": "UCI optical handwritten digits (CC BY 4.0), sample_checkpoints/digits_train.npz"}
    path = directory / f"{NAME}.safetensors"
    state = {k: v.detach().contiguous().clone() for k, v in sorted(model.state_dict().items())}
    save_file(state, str(path), metadata={
        "calibscope.arch": ARCH, "calibscope.arch_kwargs": json.dumps(ARCH_KWARGS),
        "calibscope.mean": json.dumps([mean]), "calibscope.std": json.dumps([std]),
        "calibscope.class_names": json.dumps(names), "calibscope.num_classes": str(len(names)),
        "calibscope.training": json.dumps(recipe)})
    sort_safetensors_header(path)
    with torch.no_grad():
        for s in ("train", "val", "test"):
            st = summarise(model(x[s]).numpy(), y[s].numpy())
            print(f"{s:<5} acc {st['acc']:.4f} nll {st['nll']:.4f} ece {st['ece']:.4f} conf {st['conf']:.4f}")
    size = path.stat().st_size
    print(f"{path.name}: {size} bytes, {time.perf_counter() - t0:.1f} s")
    if size > MAX_BYTES:
        raise SystemExit(f"{path.name} takes {size} bytes, more than {MAX_BYTES}")


if __name__ == "__main__":
    main()
