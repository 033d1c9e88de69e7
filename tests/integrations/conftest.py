"""Shared by the framework tests: a tiny classification problem, the event-file and MLflow readers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def need(module: str):
    """Import ``module``; skipped only when it is absent and CI is unset (CI installs every extra)."""
    if os.environ.get("CI"):
        import importlib

        return importlib.import_module(module)
    return pytest.importorskip(module)


def toy_problem(n: int = 192, d: int = 8, k: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = 2 * torch.randn(k, d, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    x = centres[y] + 1.5 * torch.randn(n, d, generator=g)
    return x, y


def event_scalars(log_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], set[str]]:
    """Scalars (tag → [(step, value)]) and image tags of every event file under ``log_dir``, read with
    TensorBoard's own EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    images: set[str] = set()
    for folder in sorted({p.parent for p in Path(log_dir).rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        images |= set(acc.Tags()["images"])
    return scalars, images


def mlflow_run(tracking_uri: str):
    """The one MLflow run in the store: (run, metric histories, artifact paths)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, runs
    run = runs[0]
    history = {key: [m.value for m in client.get_metric_history(run.info.run_id, key)] for key in run.data.metrics}

    def artifacts(path=None):
        for f in client.list_artifacts(run.info.run_id, path):
            yield from artifacts(f.path) if f.is_dir else [f.path]

    return run, history, sorted(artifacts())
