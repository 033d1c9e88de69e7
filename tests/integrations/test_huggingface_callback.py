"""The Hugging Face Trainer callback on a real 2-epoch CPU run: keys read back from TensorBoard event files and
from the MLflow store, the metrics dict and log history; numbers equal the one-shot metrics of the model."""

from __future__ import annotations

import pytest
import torch

from tests.integrations.conftest import event_scalars, mlflow_run, need, toy_problem

transformers = need("transformers")
need("accelerate")
need("tensorboard")
need("mlflow")

from calibscope.diagnostics.calibration import calibration_metrics  # noqa: E402
from calibscope.integrations.huggingface import CalibrationCallback  # noqa: E402

KEYS = ("ece", "mce", "nll", "brier", "accuracy", "temperature", "ece_at_temperature")


class Tiny(torch.nn.Module):
    """What a Trainer needs of a model: forward(**batch) → {"loss", "logits"}."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))

    def forward(self, x, labels=None):
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(logits, labels)
        return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_EXPERIMENT_NAME", "calibscope-test")
        mp.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
        mp.chdir(root)  # MLflow puts a SQL store's artifacts in ./mlruns
        torch.manual_seed(0)
        x, y = toy_problem()
        rows = [{"x": xi, "labels": int(yi)} for xi, yi in zip(x, y, strict=True)]
        args = transformers.TrainingArguments(
            output_dir=str(root / "out"), num_train_epochs=2, eval_strategy="epoch", logging_strategy="epoch",
            save_strategy="no", report_to=["tensorboard", "mlflow"], use_cpu=True, learning_rate=0.1,
            per_device_train_batch_size=32, per_device_eval_batch_size=24, disable_tqdm=True, seed=0)
        callback = CalibrationCallback(max_ece=0.0)
        model = Tiny()
        trainer = transformers.Trainer(model=model, args=args, train_dataset=rows[:128], eval_dataset=rows[128:],
                                       callbacks=[callback])
        with pytest.warns(UserWarning, match="max_ece 0"):
            trainer.train()
        model.eval()
        with torch.no_grad():
            logits = model(x[128:])["logits"]
    return root, uri, trainer, callback, logits, y[128:]


def test_metrics_history_and_numbers(trained):
    _, _, trainer, callback, logits, labels = trained
    evaluations = [h for h in trainer.state.log_history if "eval_calibration_ece" in h]
    assert len(evaluations) == 2 and all(f"eval_calibration_{k}" in evaluations[-1] for k in KEYS)
    reference = calibration_metrics(logits, labels)
    for key in ("ece", "nll", "brier", "accuracy"):
        assert evaluations[-1][f"eval_calibration_{key}"] == pytest.approx(reference.value(key), abs=1e-6), key
    assert callback.last.metrics.n == 64


def test_scalars_and_figure_in_tensorboard(trained):
    root = trained[0]
    scalars, images = event_scalars(root / "out" / "runs")
    for key in KEYS:
        assert len(scalars[f"eval/calibration_{key}"]) == 2, key
    assert "eval/loss" in scalars  # the same run folder as the Trainer's own TensorBoardCallback
    assert "eval/calibration_reliability" in images


def test_scalars_and_figure_in_mlflow(trained):
    _, uri, _, callback, _, _ = trained
    run, history, artifacts = mlflow_run(uri)
    for key in KEYS:
        assert len(history[f"eval_calibration_{key}"]) == 2, key
    assert "eval_loss" in history  # the run Hugging Face's MLflowCallback started
    assert history["eval_calibration_ece"][-1] == pytest.approx(callback.last.scalars["ece"], rel=1e-12)
    assert sum(a.endswith(".png") and "calibration_reliability" in a for a in artifacts) == 2
