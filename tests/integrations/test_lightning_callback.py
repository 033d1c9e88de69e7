"""The Lightning callback on a real 2-epoch CPU run: keys read back from TensorBoard event files and from the
MLflow store; the last epoch's numbers equal the one-shot metrics of the trained model."""

from __future__ import annotations

import pytest
import torch

from tests.integrations.conftest import event_scalars, mlflow_run, need, toy_problem

L = need("lightning")
need("tensorboard")
need("mlflow")

from calibscope.diagnostics.calibration import calibration_metrics  # noqa: E402
from calibscope.diagnostics.temperature import fit_temperature  # noqa: E402
from calibscope.integrations.lightning import CalibrationCallback  # noqa: E402

KEYS = ("ece", "mce", "nll", "brier", "accuracy", "temperature", "ece_at_temperature")


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):  # returns the loss only: the callback runs forward itself
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x), y)
        self.log("val_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

    root = tmp_path_factory.mktemp("lightning")
    torch.manual_seed(0)
    x, y = toy_problem()
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:128], y[:128]), batch_size=32)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[128:], y[128:]), batch_size=24)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    loggers = [TensorBoardLogger(str(root / "tb"), name="run"),
               MLFlowLogger(experiment_name="calibscope-test", tracking_uri=uri, artifact_location=str(root / "art"))]
    callback = CalibrationCallback(max_ece=0.0, on_max_ece="warn")
    model = Tiny()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=loggers, callbacks=[callback],
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        num_sanity_val_steps=1)
    with pytest.warns(UserWarning, match="max_ece 0"):
        trainer.fit(model, train, val)
    with torch.no_grad():
        logits = model(x[128:])
    return root, uri, trainer, callback, logits, y[128:]


def test_scalars_and_figures_in_tensorboard(trained):
    root, _, trainer, _, logits, labels = trained
    scalars, images = event_scalars(root / "tb")
    for key in KEYS:
        assert len(scalars[f"calibration/{key}"]) == 2, key  # once per epoch, not for the sanity check
    assert "calibration/reliability" in images
    reference = calibration_metrics(logits, labels)
    last = {key: scalars[f"calibration/{key}"][-1][1] for key in KEYS}
    for key in ("ece", "nll", "brier", "accuracy"):  # event files hold float32
        assert last[key] == pytest.approx(reference.value(key), rel=1e-5, abs=1e-6), key
    assert last["temperature"] == pytest.approx(fit_temperature(logits, labels).temperature, rel=1e-5)


def test_scalars_and_figures_in_mlflow(trained):
    _, uri, _, callback, _, _ = trained
    run, history, artifacts = mlflow_run(uri)
    for key in KEYS:
        assert len(history[f"calibration/{key}"]) == 2, key
    assert history["calibration/ece"][-1] == pytest.approx(callback.last.scalars["ece"], rel=1e-6)  # logged as float32
    assert [a for a in artifacts if a.endswith(".png")] == ["calibration_reliability_epoch000.png",
                                                             "calibration_reliability_epoch001.png"]


def test_stop_on_max_ece(tmp_path):
    x, y = toy_problem()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    trainer = L.Trainer(max_epochs=5, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                        callbacks=[CalibrationCallback(max_ece=0.0, on_max_ece="stop", fit_temperature=False)],
                        default_root_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="stopping"):
        trainer.fit(Tiny(), data, data)
    assert trainer.current_epoch == 1  # stopped after the first validation
