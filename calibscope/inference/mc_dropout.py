"""MC-dropout (Gal & Ghahramani, ICML 2016): the model in eval mode except its dropout layers, seeded per batch.

:func:`enable_dropout` switches every dropout layer (``nn.Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout``,
``FeatureAlphaDropout``) of an eager ``nn.Module`` to train mode and leaves the rest (BatchNorm on its running
statistics) in eval. The masks of one stochastic pass come from the global torch generator seeded, for each
batch, from (seed, pass, first row of the batch) (:func:`batch_seed`), inside ``torch.random.fork_rng`` so the
caller's random state is untouched: the same seed, batch size and device give the same numbers. Exported
programs (``.pt2``), TorchScript, ONNX and AOTInductor models have their mode frozen at export, so they
cannot be switched (:func:`check_mc_dropout_format`).
"""

from __future__ import annotations

import hashlib

from torch import nn

from calibscope.errors import InputError

DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
# checkpoint formats whose module is eager Python (modes can be switched layer by layer)
EAGER_FORMATS = ("state_dict", "safetensors", "huggingface", "pickle")


def dropout_layers(model: nn.Module) -> list[str]:
    """Names of ``model``'s dropout layers (``""`` for the model itself)."""
    return [name for name, module in model.named_modules() if isinstance(module, DROPOUT_TYPES)]


def enable_dropout(model: nn.Module) -> list[str]:
    """``model`` in eval mode with its dropout layers in train mode; returns their names (InputError if none)."""
    model.eval()
    names = dropout_layers(model)
    if not names:
        raise InputError("--mc-dropout needs dropout layers, and the model has none (nn.Dropout, Dropout1d/2d/3d, "
                         "AlphaDropout, FeatureAlphaDropout): every pass would give the same deterministic "
                         "prediction; use --ensemble over several checkpoints instead")
    for module in model.modules():
        if isinstance(module, DROPOUT_TYPES):
            module.train()
    return names


def batch_seed(seed: int, dropout_pass: int, first_row: int) -> int:
    """The torch seed of the batch starting at ``first_row`` in stochastic pass ``dropout_pass`` (a 63-bit hash)."""
    digest = hashlib.sha256(f"calibscope-mc-dropout:{seed}:{dropout_pass}:{first_row}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def check_mc_dropout_format(fmt: str, path: object) -> None:
    """InputError unless a checkpoint of format ``fmt`` is an eager module whose dropout layers can be switched."""
    if fmt in EAGER_FORMATS:
        return
    why = {"export": "a torch.export program (.pt2) fixes train/eval behaviour when it is exported",
           "torchscript": "a TorchScript module was compiled in the mode it had when it was saved",
           "onnx": "an ONNX graph fixes train/eval behaviour when it is exported",
           "aoti": "an AOTInductor library is compiled code with its mode fixed"}.get(
        fmt, "a logits/probabilities file holds one fixed prediction per example")
    raise InputError(f"--mc-dropout cannot run '{path}': {why}, so its dropout layers cannot be switched on; pass "
                     "the weights as a state_dict or safetensors file with --arch (or a Hugging Face model)")
