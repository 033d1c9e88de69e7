"""The inference engine against plain eager calls of the same model (an independent computation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from calibscope.errors import InputError
from calibscope.inference import cache
from calibscope.inference.engine import InferenceOptions, run_inference
from calibscope.inference.outputs import Outputs
from calibscope.inference.validate import validate_outputs
from calibscope.models import MLP, DigitsCNN


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DigitsCNN(channels=8, hidden=32).eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (203, 1, 8, 8), generator=g, dtype=torch.uint8)


def _reference(model, images, mean, std):
    x = images.numpy().astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(mean)) / np.float32(std)
    with torch.no_grad():
        return model(torch.from_numpy(x))


def test_logits_match_eager_with_uint8_normalisation_and_uneven_batches(model, images):
    out = run_inference(model, images, torch.arange(203) % 10,
                        options=InferenceOptions(batch_size=64, mean=(0.3,), std=(0.2,)), progress=False)
    ref = _reference(model, images, 0.3, 0.2)
    assert out.logits.dtype == torch.float32 and out.logits.shape == (203, 10)
    torch.testing.assert_close(out.logits, ref, rtol=0, atol=1e-6)
    assert out.labels.dtype == torch.int64 and out.meta["precision"] == "fp32"
    assert out.meta["device"] == "cpu"


def test_float_tabular_inputs_per_feature_standardisation():
    torch.manual_seed(0)
    mlp = MLP(5, 3, hidden=(7,)).eval()
    x = torch.randn(50, 5)
    mean, std = (0.1, 0.2, 0.3, 0.4, 0.5), (1.0, 2.0, 3.0, 4.0, 5.0)
    original = x.clone()
    out = run_inference(mlp, x, options=InferenceOptions(batch_size=16, mean=mean, std=std), progress=False)
    with torch.no_grad():
        ref = mlp((x - torch.tensor(mean)) / torch.tensor(std))
    torch.testing.assert_close(out.logits, ref, rtol=0, atol=1e-6)
    assert torch.equal(x, original), "the engine must never modify the caller's data"


class _OOMAbove(nn.Module):
    """Raises CUDA's OOM error type for batches larger than ``limit`` (an injected OOM)."""

    def __init__(self, inner: nn.Module, limit: int):
        super().__init__()
        self.inner, self.limit, self.sizes = inner, limit, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def test_cuda_oom_halves_the_batch_and_goes_on(model, images, monkeypatch):
    import calibscope.inference.engine as engine

    wrapped = _OOMAbove(model, limit=40)
    notices = []
    # pretend the device is CUDA-like for the OOM policy only; tensors stay on the CPU
    monkeypatch.setattr(engine, "resolve_device", lambda spec: _FakeCuda())
    out = run_inference(wrapped, images, options=InferenceOptions(batch_size=160), progress=False,
                        on_notice=notices.append)
    ref = _reference(model, images, 0.0, 1.0)
    torch.testing.assert_close(out.logits, ref, rtol=0, atol=1e-6)
    assert out.meta["batch_size"] == 40 and out.meta["batch_size_requested"] == 160
    assert len(notices) == 1 and "halving" in notices[0]
    assert max(s for s in wrapped.sizes if s <= 40) == 40


class _FakeCuda:
    """Behaves like torch.device('cpu') for tensors, but reports type 'cuda' to the OOM policy."""

    type = "cuda"
    index = None

    def __str__(self):
        return "cpu"


@pytest.fixture(autouse=True)
def _fake_cuda_tensors(monkeypatch, request):
    if request.node.name != "test_cuda_oom_halves_the_batch_and_goes_on":
        return
    import calibscope.inference.engine as engine

    orig_batches, orig_prepare = engine._Batches, engine._prepare_model
    monkeypatch.setattr(engine, "_Batches", lambda inputs, device, cl: orig_batches(inputs, torch.device("cpu"),
                                                                                     False))
    monkeypatch.setattr(engine, "_prepare_model", lambda m, d, cl: orig_prepare(m, torch.device("cpu"), False))
    import calibscope.feeding as feeding

    monkeypatch.setattr(feeding, "input_normaliser", _cpu_normaliser(feeding.input_normaliser))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "fake")


def _cpu_normaliser(orig):
    return lambda inputs, mean, std, device: orig(inputs, mean, std, torch.device("cpu"))


def test_oom_on_cpu_is_not_swallowed(images):
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_inference(_OOMAbove(DigitsCNN().eval(), 10), images, options=InferenceOptions(batch_size=64),
                      progress=False)


def test_penultimate_features_and_templates_eager(model, images):
    out = run_inference(model, images, options=InferenceOptions(batch_size=50, capture_features=True),
                        progress=False)
    x = images.float() / 255
    with torch.no_grad():
        feats = model.features(x)
    torch.testing.assert_close(out.features, feats, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.weight, model.classifier.weight.detach())
    torch.testing.assert_close(out.bias, model.classifier.bias.detach())
    # logits are the affine map of the features by the templates
    torch.testing.assert_close(out.logits, out.features @ out.weight.T + out.bias, rtol=0, atol=1e-5)
    assert out.meta["feature_layer"] == "classifier"


def test_penultimate_features_exported_program(model, images, tmp_path):
    ep = torch.export.export(model, (images[:4].float(),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, tmp_path / "m.pt2")
    program = torch.export.load(tmp_path / "m.pt2").module()
    out = run_inference(program, images, options=InferenceOptions(batch_size=64, capture_features=True),
                        progress=False)
    with torch.no_grad():
        feats = model.features(images.float() / 255)
    torch.testing.assert_close(out.features, feats, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.weight, model.classifier.weight.detach())
    torch.testing.assert_close(out.logits, _reference(model, images, 0.0, 1.0), rtol=0, atol=1e-5)


def test_torchscript_feature_capture_is_a_clear_error(model, images):
    scripted = torch.jit.script(model)
    with pytest.raises(InputError, match="TorchScript"):
        run_inference(scripted, images, options=InferenceOptions(capture_features=True), progress=False)


def test_named_layer_and_unknown_layer(model, images):
    out = run_inference(model, images[:10], options=InferenceOptions(capture_features=True, layer="features.6"),
                        progress=False)
    assert out.features.shape == (10, 8 * 2 * 16) and out.weight.shape == (32, 256)
    with pytest.raises(InputError, match="not a module"):
        run_inference(model, images[:10], options=InferenceOptions(capture_features=True, layer="nope"),
                      progress=False)


def test_bf16_autocast_is_recorded_and_close(model, images):
    out = run_inference(model, images, options=InferenceOptions(precision="bf16"), progress=False)
    assert out.meta["precision"] == "bf16"
    ref = _reference(model, images, 0.0, 1.0)
    assert (out.logits - ref).abs().max() < 0.1


@pytest.mark.parametrize("opts,match", [
    (InferenceOptions(batch_size=0), "batch_size"),
    (InferenceOptions(precision="fp8"), "precision"),
    (InferenceOptions(mean=(0.5,), std=None), "together"),
    (InferenceOptions(mean=(0.5,), std=(0.0,)), "positive"),
    (InferenceOptions(mean=(0.5, 0.5), std=(1.0, 1.0)), "channels"),
    (InferenceOptions(device="cuda:7"), "CUDA"),
    (InferenceOptions(device="tpu"), "device"),
])
def test_bad_options(model, images, opts, match):
    with pytest.raises(InputError, match=match):
        run_inference(model, images, options=opts, progress=False)


def test_wrong_output_shape_is_explained(images):
    class Bad(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(InputError, match="expected"):
        run_inference(Bad(), images, progress=False)


def test_validate_outputs_counts_nan_and_checks_labels():
    logits = torch.zeros(6, 3)
    logits[2, 1] = float("nan")
    logits[4, 0] = float("inf")
    logits[4, 2] = float("-inf")
    with pytest.raises(InputError, match=r"3 logits are NaN or infinite, in 2 of 6 rows \(first at row 2\)"):
        validate_outputs(Outputs(logits, torch.zeros(6, dtype=torch.int64)), source="'m'")
    with pytest.raises(InputError, match=r"labels range over \[0, 5\] but the model has 3 classes"):
        validate_outputs(Outputs(torch.zeros(6, 3), torch.arange(6)), source="'m'")
    with pytest.raises(InputError, match="says 10 classes"):
        validate_outputs(Outputs(torch.zeros(6, 3), None), source="'m'", num_classes=10)


def test_cache_round_trip_is_exact(tmp_path, monkeypatch, model, images):
    monkeypatch.setenv("CALIBSCOPE_CACHE_DIR", str(tmp_path / "c"))
    out = run_inference(model, images, torch.arange(203) % 10,
                        options=InferenceOptions(capture_features=True), progress=False)
    key = cache.cache_key(a=1)
    assert cache.load_cached(key) is None
    cache.store(key, out)
    back = cache.load_cached(key)
    for name in ("logits", "features", "weight", "bias"):
        assert torch.equal(getattr(back, name), getattr(out, name))
    assert back.labels is None  # labels always come from the dataset, never from the cache
    assert back.meta["cache"] == "hit" and back.meta["precision"] == "fp32"
    assert cache.cache_key(a=1) != cache.cache_key(a=2)
    assert not list((tmp_path / "c").glob("*.tmp"))


def test_automatic_batch_size_from_example_size_and_free_memory(model, images):
    from calibscope.inference.engine import automatic_batch_size

    cpu, big = torch.device("cpu"), 1 << 40
    assert automatic_batch_size(images, cpu, free_bytes=big) == 1024  # 8×8 digits: small examples
    imagenet = torch.empty(10_000, 3, 224, 224, dtype=torch.uint8)
    assert automatic_batch_size(imagenet, cpu, free_bytes=big) == 8  # 8 MiB of float32 input per batch
    assert automatic_batch_size(imagenet[:40], cpu, free_bytes=big) == 4  # ≥ 8 batches: the bar moves
    assert automatic_batch_size(imagenet, cpu, free_bytes=64 << 20) == 2  # little free memory: smaller
    cifar = torch.empty(10_000, 3, 32, 32, dtype=torch.uint8)
    assert automatic_batch_size(cifar, cpu, free_bytes=big) == 512
    assert automatic_batch_size(imagenet, torch.device("cuda"), free_bytes=80 << 30) == 1024
    out = run_inference(model, images, options=InferenceOptions(batch_size=None, mean=(0.3,), std=(0.4,)),
                        progress=False)
    assert out.meta["batch_size"] == 203 or out.meta["batch_size"] == 1024
    assert out.meta["batch_size_requested"] == "auto"
    torch.testing.assert_close(out.logits, _reference(model, images, 0.3, 0.4), rtol=0, atol=1e-5)
