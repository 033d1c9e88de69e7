"""Build the sample checkpoints in ``sample_checkpoints/`` from ``sample_checkpoints/digits.npz``.

Deterministic (fixed seeds, ``torch.use_deterministic_algorithms(True)``, one CPU thread): running it twice
gives bit-identical weights. It writes

* ``digits_train.npz`` (150 examples, 15 per class), ``digits_val.npz`` (300), ``digits_test.npz`` (1347):
  a seeded permutation of the 1797 digits, keys ``images`` (uint8 ``[N, 1, 8, 8]``), ``labels`` (int64),
  ``class_names``;
* ``DigitsCNN`` (``calibscope.models``) trained three ways with the same initialisation, batch order and
  schedule: hard targets (cross-entropy), label smoothing α = 0.1 (Müller et al. 2019) and SAM ρ = 0.05
  (Foret et al. 2021); each as ``NAME.pt2`` (``torch.export``), ``NAME.ts`` (TorchScript) and
  ``NAME.safetensors`` (state_dict + arch metadata), with the metadata also in a ``calibscope.json`` extra
  file of the first two;
* ``digits_hard_test_logits.npz``: the hard-target model's logits on the test split;
* ``series/digits_{hard,ls}_epoch_{E}.safetensors`` for E in ``SERIES_EPOCHS``: snapshots of the hard and
  label-smoothed runs during training (the same runs, not retrained), weights stored as float16 to keep the
  series small, for ``calibscope mi`` against epoch (Müller et al. 2019 §4). Taking a snapshot draws no
  random numbers, so the final models are the same bytes as without the series.

The models expect uint8 images divided by 255 and then normalised with the training split's pixel mean and
standard deviation; that normalisation is not part of the model, it travels in the metadata (``mean``,
``std``) and calibscope's engine applies it.

Usage: ``python scripts/make_sample_checkpoints.py [--dir sample_checkpoints]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from calibscope.models import DigitsCNN

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "sample_checkpoints"
ARCH = "calibscope.models:DigitsCNN"
ARCH_KWARGS = {"num_classes": 10, "channels": 32, "hidden": 128, "in_channels": 1}

SPLIT_SEED = 0
N_TRAIN_PER_CLASS = 15
N_VAL = 300

# The training recipe, the same for the three models except for the loss (chosen once, not tuned).
SEED = 0
OPTIMISER = "Adam"
LR = 1e-3
BATCH_SIZE = 30
EPOCHS = 200
ALPHA = 0.1  # label smoothing (Müller et al. 2019)
RHO = 0.05  # SAM neighbourhood radius (Foret et al. 2021)

MODELS = {
    "digits_hard": {"loss": "cross_entropy", "alpha": 0.0, "rho": 0.0},
    "digits_ls": {"loss": "cross_entropy_label_smoothing", "alpha": ALPHA, "rho": 0.0},
    "digits_sam": {"loss": "cross_entropy_sam", "alpha": 0.0, "rho": RHO},
}
MAX_BYTES = 2 * 1024 * 1024
SERIES_EPOCHS = (2, 10, 50, 200)  # roughly geometric; chosen once, before looking at any result
SERIES_MODELS = ("digits_hard", "digits_ls")
SERIES_MAX_BYTES = 3 * 1000 * 1000  # the whole series


def split_indices(labels: np.ndarray, *, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train (first 15 of each class in a seeded permutation), val (next 300 of the rest), test (the rest).

    Each split's indices are returned sorted, so the files keep the original order of ``digits.npz``.
    """
    perm = np.random.default_rng(seed).permutation(len(labels))
    train = np.concatenate([perm[labels[perm] == c][:N_TRAIN_PER_CLASS] for c in np.unique(labels)])
    rest = perm[~np.isin(perm, train)]
    val, test = rest[:N_VAL], rest[N_VAL:]
    return np.sort(train), np.sort(val), np.sort(test)


def normalise(images_u8: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """calibscope's convention: uint8 → float32 / 255, then (x − mean) / std, all in float32."""
    x = images_u8.to(torch.float32).div(255.0)
    m = torch.tensor([mean], dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor([std], dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with right-closed bins ((m−1)/M, m/M] in float64 (Guo et al. 2017 §2); printout only."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    conf = p.max(axis=1)
    acc = (p.argmax(axis=1) == labels).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    gap = np.abs(np.bincount(bins, acc, n_bins) - np.bincount(bins, conf, n_bins))
    return float(gap.sum() / len(labels))


def summarise(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    z = logits.astype(np.float64)
    logp = z - z.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    return {
        "nll": float(-logp[np.arange(len(labels)), labels].mean()),
        "acc": float((z.argmax(axis=1) == labels).mean()),
        "ece": expected_calibration_error(logits, labels),
        "conf": float(np.exp(logp.max(axis=1)).mean()),
    }


def train(recipe: dict[str, Any], x: torch.Tensor, y: torch.Tensor, *, snapshots: tuple[int, ...] = (),
          taken: dict[int, dict[str, torch.Tensor]] | None = None) -> DigitsCNN:
    """Mini-batch Adam; with ``rho > 0`` each step is SAM's two-step update (Foret et al. 2021, Alg. 1).

    After each epoch listed in ``snapshots`` a copy of the state_dict goes into ``taken[epoch]``.
    """
    torch.manual_seed(SEED)
    model = DigitsCNN(**ARCH_KWARGS)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=LR)
    batches = torch.Generator().manual_seed(SEED)
    alpha, rho = recipe["alpha"], recipe["rho"]

    def loss_fn(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(inputs), targets, label_smoothing=alpha)

    for epoch in range(1, EPOCHS + 1):
        order = torch.randperm(len(y), generator=batches)
        for start in range(0, len(y), BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            xb, yb = x[idx], y[idx]
            optimiser.zero_grad(set_to_none=True)
            loss_fn(xb, yb).backward()
            if rho > 0:
                # SAM: ε = ρ g / ‖g‖ (norm over all parameters), gradient at θ + ε, restore θ, step.
                grads = [p.grad for p in params]
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
                scale = rho / (norm + 1e-12)
                with torch.no_grad():
                    eps = [g * scale for g in grads]
                    for p, e in zip(params, eps, strict=True):
                        p.add_(e)
                optimiser.zero_grad(set_to_none=True)
                loss_fn(xb, yb).backward()
                with torch.no_grad():
                    for p, e in zip(params, eps, strict=True):
                        p.sub_(e)
            optimiser.step()
        if epoch in snapshots and taken is not None:
            taken[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return model.eval()


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    return model(x).numpy()


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def sort_safetensors_header(path: Path) -> None:
    """Rewrite a safetensors header with sorted keys, so the file's bytes do not depend on hash order.

    ``save_file`` writes ``__metadata__`` in hash-map order, which changes from run to run. The format is an
    8-byte little-endian header length, a JSON header (padded with spaces to a multiple of 8) and the data
    buffer; tensor offsets are relative to the buffer, so re-serialising the header leaves them valid.
    """
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
    tmp.replace(path)


def save_model(directory: Path, name: str, model: DigitsCNN, example: torch.Tensor, meta: dict) -> None:
    meta_json = json.dumps(meta)

    ep = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, directory / f"{name}.pt2", extra_files={"calibscope.json": meta_json})

    scripted = torch.jit.script(model)
    torch.jit.save(scripted, str(directory / f"{name}.ts"), _extra_files={"calibscope.json": meta_json})

    state = {k: v.detach().contiguous().clone() for k, v in sorted(model.state_dict().items())}
    save_file(
        state,
        str(directory / f"{name}.safetensors"),
        metadata={
            "calibscope.arch": meta["arch"],
            "calibscope.arch_kwargs": json.dumps(meta["arch_kwargs"]),
            "calibscope.mean": json.dumps(meta["mean"]),
            "calibscope.std": json.dumps(meta["std"]),
            "calibscope.class_names": json.dumps(meta["class_names"]),
            "calibscope.num_classes": str(meta["num_classes"]),
            "calibscope.training": json.dumps(meta["training"]),
        },
    )
    sort_safetensors_header(directory / f"{name}.safetensors")
    with safe_open(str(directory / f"{name}.safetensors"), framework="pt") as f:
        same = sorted(f.keys()) == sorted(state)
        same = same and all(torch.equal(f.get_tensor(k), state[k]) for k in state)
        if not same or json.loads(f.metadata()["calibscope.training"]) != meta["training"]:
            raise SystemExit(f"{name}.safetensors: did not round-trip")

    # The metadata must come back through the plain loaders.
    files = {"calibscope.json": ""}
    torch.export.load(directory / f"{name}.pt2", extra_files=files)
    if json.loads(files["calibscope.json"]) != meta:
        raise SystemExit(f"{name}.pt2: calibscope.json did not round-trip")
    files = {"calibscope.json": ""}
    torch.jit.load(str(directory / f"{name}.ts"), _extra_files=files)
    if json.loads(files["calibscope.json"]) != meta:
        raise SystemExit(f"{name}.ts: calibscope.json did not round-trip")


def save_series(directory: Path, name: str, taken: dict[int, dict[str, torch.Tensor]], meta: dict) -> list[Path]:
    """``series/NAME_epoch_E.safetensors``: float16 weights + the metadata, ``training.epochs`` = E."""
    folder = directory / "series"
    folder.mkdir(exist_ok=True)
    written = []
    for epoch, state in sorted(taken.items()):
        recipe = {**meta["training"], "epochs": epoch, "epochs_planned": EPOCHS, "stored_dtype": "float16"}
        path = folder / f"{name}_epoch_{epoch}.safetensors"
        half = {k: v.to(torch.float16).contiguous() for k, v in sorted(state.items())}
        save_file(half, str(path), metadata={
            "calibscope.arch": meta["arch"],
            "calibscope.arch_kwargs": json.dumps(meta["arch_kwargs"]),
            "calibscope.mean": json.dumps(meta["mean"]),
            "calibscope.std": json.dumps(meta["std"]),
            "calibscope.class_names": json.dumps(meta["class_names"]),
            "calibscope.num_classes": str(meta["num_classes"]),
            "calibscope.training": json.dumps(recipe),
        })
        sort_safetensors_header(path)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args()
    directory: Path = args.dir

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    with np.load(directory / "digits.npz") as data:
        images, labels, class_names = data["images"], data["labels"], data["class_names"]
    names = [str(c) for c in class_names]

    train_idx, val_idx, test_idx = split_indices(labels, seed=SPLIT_SEED)
    splits = {"train": train_idx, "val": val_idx, "test": test_idx}
    for split, idx in splits.items():
        save_npz(directory / f"digits_{split}.npz", images=images[idx], labels=labels[idx], class_names=class_names)
        print(
            f"digits_{split}.npz: {len(idx)} examples, per class "
            f"{np.bincount(labels[idx], minlength=len(names)).tolist()}"
        )

    # Normalisation statistics of the training split, over [0, 1]-scaled pixels (float64, then stored).
    train_pixels = images[train_idx].astype(np.float64) / 255.0
    mean, std = float(train_pixels.mean()), float(train_pixels.std())
    print(f"train pixel mean {mean:.6f} std {std:.6f}")

    x = {s: normalise(torch.from_numpy(images[i]), mean, std) for s, i in splits.items()}
    y = {s: torch.from_numpy(labels[i]) for s, i in splits.items()}

    header = (
        f"{'model':<12} {'train nll':>9} {'train acc':>9} {'val acc':>7} {'test acc':>8} "
        f"{'test nll':>8} {'test ECE':>8} {'test conf':>9} {'seconds':>7}"
    )
    rows = []
    series: list[Path] = []
    for name, loss in MODELS.items():
        t = time.perf_counter()
        taken: dict[int, dict[str, torch.Tensor]] = {}
        snapshots = SERIES_EPOCHS if name in SERIES_MODELS else ()
        model = train(loss, x["train"], y["train"], snapshots=snapshots, taken=taken)
        seconds = time.perf_counter() - t
        recipe = {
            **loss,
            "epochs": EPOCHS,
            "optimiser": OPTIMISER,
            "lr": LR,
            "batch_size": BATCH_SIZE,
            "weight_decay": 0.0,
            "augmentation": None,
            "seed": SEED,
            "n_train": len(train_idx),
            "data": "UCI optical handwritten digits (CC BY 4.0), sample_checkpoints/digits_train.npz",
        }
        meta = {
            "arch": ARCH,
            "arch_kwargs": ARCH_KWARGS,
            "mean": [mean],
            "std": [std],
            "class_names": names,
            "num_classes": len(names),
            "training": recipe,
        }
        save_model(directory, name, model, x["val"][:4].clone(), meta)
        if taken:
            series += save_series(directory, name, taken, meta)

        stats = {s: summarise(predict(model, x[s]), y[s].numpy()) for s in splits}
        rows.append(
            f"{name:<12} {stats['train']['nll']:>9.2e} {stats['train']['acc']:>9.4f} "
            f"{stats['val']['acc']:>7.4f} {stats['test']['acc']:>8.4f} {stats['test']['nll']:>8.4f} "
            f"{stats['test']['ece']:>8.4f} {stats['test']['conf']:>9.4f} {seconds:>7.1f}"
        )
        print(rows[-1], flush=True)
        if name == "digits_hard":
            save_npz(
                directory / "digits_hard_test_logits.npz",
                logits=predict(model, x["test"]),
                labels=labels[test_idx],
                class_names=class_names,
            )

    print()
    print(header)
    print("\n".join(rows))
    print()
    too_big = []
    for path in sorted(directory.iterdir()):
        if path.suffix in {".npz", ".pt2", ".ts", ".safetensors"}:
            size = path.stat().st_size
            print(f"{path.name:<34} {size:>9} bytes")
            if size >= MAX_BYTES:
                too_big.append(path.name)
    if too_big:
        raise SystemExit(f"files of 2 MB or more: {too_big}")
    series_bytes = sum(p.stat().st_size for p in series)
    print(f"series: {len(series)} files, {series_bytes} bytes")
    if series_bytes > SERIES_MAX_BYTES:
        raise SystemExit(f"the checkpoint series takes {series_bytes} bytes, more than {SERIES_MAX_BYTES}")
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
