"""Hugging Face folders written by save_pretrained (tiny random ViT and BERT configs, nothing downloaded), and
token datasets written from a real tokenizer's output. Logits are checked against the transformers model
itself (1e-5); the Hessian of the head against an exact Hessian; features against the model's own pooled
output."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from calibscope.cli import app
from calibscope.errors import InputError, UntrustedFileError
from calibscope.inference.engine import InferenceOptions, run_inference
from calibscope.inference.pipeline import compute_outputs
from calibscope.loading.checkpoint import load_checkpoint
from calibscope.loading.dataset import load_dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("CI"):
    import transformers
else:
    transformers = pytest.importorskip("transformers")

runner = CliRunner()
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.3, 0.4]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "dog", "sat", "ran", "on", "mat", "a", "big"]


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_vit")
    config = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=37, num_labels=3,
                                    id2label={0: "ant", 1: "bee", 2: "cow"}, label2id={"ant": 0, "bee": 1, "cow": 2})
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    folder = root / "vit"
    model.save_pretrained(folder)
    image_processor = _vit_processor()(size={"height": 16, "width": 16}, image_mean=MEAN, image_std=STD)
    image_processor.save_pretrained(folder)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (30, 3, 16, 16), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 3, (30,), generator=gen)
    np.savez(root / "images.npz", images=x.numpy(), labels=y.numpy())
    pixel_values = (x.float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    return root, folder, model, x, y, pixel_values


def _vit_processor():
    for name in ("ViTImageProcessor", "ViTImageProcessorPil"):
        if hasattr(transformers, name):
            return getattr(transformers, name)
    raise AssertionError("transformers has no ViT image processor")


def test_vit_folder_loads_with_its_preprocessing_and_class_names(vit):
    root, folder, model, x, y, pixel_values = vit
    ckpt = load_checkpoint(folder)
    assert ckpt.format == "huggingface"
    assert ckpt.metadata["mean"] == pytest.approx(MEAN) and ckpt.metadata["std"] == pytest.approx(STD)
    assert ckpt.metadata["input_size"] == [16, 16] and ckpt.metadata["class_names"] == ["ant", "bee", "cow"]
    out = compute_outputs(ckpt, load_dataset(root / "images.npz"), InferenceOptions(batch_size=8), use_cache=False)
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model(pixel_values=pixel_values).logits, atol=1e-5, rtol=0)
    assert out.meta["output"] == "logits"


def test_vit_penultimate_features_are_the_classifier_input(vit):
    _, folder, model, x, _, pixel_values = vit
    ckpt = load_checkpoint(folder)
    out = run_inference(ckpt.module, x, options=InferenceOptions(mean=tuple(MEAN), std=tuple(STD),
                                                                 capture_features=True), progress=False)
    with torch.no_grad():
        pooled = model.vit(pixel_values).last_hidden_state[:, 0]
    torch.testing.assert_close(out.features, pooled, atol=1e-5, rtol=0)
    assert out.meta["feature_layer"] == "classifier"
    torch.testing.assert_close(out.weight, model.classifier.weight.detach())


def test_vit_hessian_of_the_head_matches_the_exact_hessian(vit):
    from calibscope.diagnostics.hessian import top_hessian_eigenvalues

    _, folder, model, x, y, pixel_values = vit
    ckpt = load_checkpoint(folder)
    got = top_hessian_eigenvalues(ckpt.module, x, y, top=2, examples=30, params=r"^classifier\.", tol=1e-8,
                                  mean=MEAN, std=STD)
    with torch.no_grad():
        f = model.vit(pixel_values).last_hidden_state[:, 0].double()
    k, d = 3, f.shape[1]

    def loss(theta):
        w, b = theta[: k * d].view(k, d), theta[k * d:]
        return torch.nn.functional.cross_entropy(f @ w.T + b, y)

    theta = torch.cat([model.classifier.weight.detach().double().flatten(), model.classifier.bias.detach().double()])
    exact = np.linalg.eigvalsh(torch.autograd.functional.hessian(loss, theta).numpy())[::-1][:2]
    np.testing.assert_allclose(got.eigenvalues, exact, rtol=1e-4)


def test_vit_folder_through_the_cli(vit, tmp_path):
    root, folder, *_ = vit
    result = runner.invoke(app, ["ece", str(folder), "--data", str(root / "images.npz"), "--json", "--no-cache"])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["results"][0]
    assert entry["format"] == "huggingface" and entry["num_classes"] == 3
    np.savez(tmp_path / "small.npz", images=np.zeros((4, 3, 8, 8), np.uint8), labels=np.zeros(4, np.int64))
    wrong = runner.invoke(app, ["ece", str(folder), "--data", str(tmp_path / "small.npz"), "--no-cache"])
    assert wrong.exit_code == 2 and "expects 16×16 images" in wrong.output and "Traceback" not in wrong.output


def test_pytorch_model_bin_folder(vit, tmp_path):
    root, folder, model, _, _, pixel_values = vit
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((folder / "config.json").read_text())
    torch.save(model.state_dict(), legacy / "pytorch_model.bin")  # what save_pretrained wrote before safetensors
    ckpt = load_checkpoint(legacy)
    with torch.no_grad():
        torch.testing.assert_close(ckpt.module(pixel_values).logits, model(pixel_values).logits, atol=1e-5, rtol=0)


def test_remote_code_needs_trust_and_non_classifiers_are_refused(vit, tmp_path):
    _, folder, *_ = vit
    custom = tmp_path / "custom"
    custom.mkdir()
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageClassification": "modeling_evil.EvilModel"}
    (custom / "config.json").write_text(json.dumps(config))
    (custom / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(UntrustedFileError, match="custom model code.*--trust"):
        load_checkpoint(custom)
    base = tmp_path / "base"
    transformers.BertModel(transformers.BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=20)).save_pretrained(base)
    with pytest.raises(InputError, match="holds a BertModel, not a classifier"):
        load_checkpoint(base)


def test_missing_transformers_is_one_line(vit, monkeypatch):
    import importlib.util

    import calibscope.loading.huggingface as hf

    real = importlib.util.find_spec
    monkeypatch.setattr(hf.importlib.util, "find_spec", lambda name, *a: None if name == "transformers"
                        else real(name, *a))
    with pytest.raises(InputError, match=r"needs transformers: pip install 'calibscope\[hf\]'"):
        load_checkpoint(vit[1])


# -------------------------------------------------------------------------------------------- token inputs


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_bert")
    config = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=37, max_position_embeddings=32,
                                     num_labels=4)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    model.save_pretrained(root / "bert")
    tokenizer = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS[5:], size=rng.integers(1, 9))) for _ in range(40)]
    encoded = tokenizer(texts, padding=True, return_tensors="np")
    labels = rng.integers(0, 4, size=40)
    np.savez(root / "tokens.npz", **encoded, labels=labels)
    ood = tokenizer([t[::-1] for t in texts[:25]], padding=True, return_tensors="np")
    np.savez(root / "ood.npz", **ood, labels=rng.integers(0, 4, size=25))
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(v) for k, v in encoded.items()}).logits
    return root, model, logits, labels


def test_token_dataset_is_named_integer_inputs(bert):
    root, *_ = bert
    ds = load_dataset(root / "tokens.npz", limit=30)
    assert len(ds) == 30 and set(ds.inputs.keys()) == {"input_ids", "token_type_ids", "attention_mask"}
    assert all(t.dtype == torch.int64 for _, t in ds.inputs.items())
    assert not ds.is_image and ds.labels.shape == (30,)


def test_token_model_logits_batching_and_cache(bert):
    root, model, logits, _ = bert
    ckpt, ds = load_checkpoint(root / "bert"), load_dataset(root / "tokens.npz")
    first = compute_outputs(ckpt, ds, InferenceOptions(batch_size=7))
    torch.testing.assert_close(first.logits, logits, atol=1e-5, rtol=0)
    again = compute_outputs(ckpt, ds, InferenceOptions(batch_size=7))
    assert again.meta["cache"] == "hit"
    torch.testing.assert_close(again.logits, first.logits, atol=0, rtol=0)  # the cache gives back what was computed


def test_token_model_shards_like_torchrun(bert):
    from calibscope.conventions import contiguous_shard

    root, _, logits, _ = bert
    ckpt, ds = load_checkpoint(root / "bert"), load_dataset(root / "tokens.npz")
    parts = [run_inference(ckpt.module, ds.inputs[slice(*contiguous_shard(len(ds), r, 3))], progress=False).logits
             for r in range(3)]
    torch.testing.assert_close(torch.cat(parts), logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("command", [
    ["ece"], ["selective"], ["ood", "--ood-data", "{root}/ood.npz", "--train", "{root}/tokens.npz"],
    ["project", "--classes", "0,1,2"],
    ["hessian", "--top", "1", "--examples", "16", "--params", "last"]])
def test_token_model_through_the_commands(bert, command, tmp_path):
    root, *_ = bert
    args = [c.format(root=root) for c in command]
    result = runner.invoke(app, [args[0], str(root / "bert"), "--data", str(root / "tokens.npz"), *args[1:],
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)


def test_mi_refuses_token_inputs_in_one_line(bert):
    root, *_ = bert
    result = runner.invoke(app, ["mi", str(root / "bert"), "--data", str(root / "tokens.npz"), "--classes", "0,1"])
    assert result.exit_code == 2, result.output
    assert "token" in result.output and "Traceback" not in result.output
    explicit = runner.invoke(app, ["mi", str(root / "bert"), "--data", str(root / "tokens.npz"), "--classes", "0,1",
                                   "--augment", "noise:0.1"])
    assert explicit.exit_code == 2 and "token" in explicit.output, explicit.output
