"""Checkpoints and datasets → model objects and tensors. All format sniffing and safety rules live here."""

from calibscope.loading.types import Checkpoint, Dataset, LogitsCheckpoint, ModelCheckpoint

__all__ = ["Checkpoint", "Dataset", "LogitsCheckpoint", "ModelCheckpoint", "load_checkpoint", "load_dataset"]


def __getattr__(name: str):
    if name == "load_checkpoint":
        from calibscope.loading.checkpoint import load_checkpoint

        return load_checkpoint
    if name == "load_dataset":
        from calibscope.loading.dataset import load_dataset

        return load_dataset
    raise AttributeError(name)
