"""Find the network's weights inside a training checkpoint's state_dict (``--prefix``).

A LightningModule's ``state_dict`` holds the network under the attribute it was stored in (``model.conv.weight``)
beside everything else the module owns: the loss's class weights (``criterion.weight``), torchmetrics states
(``train_acc.tp``), an EMA copy (``model_ema.…``). Wrapper prefixes that cover every key (``module.`` of
DistributedDataParallel, ``_orig_mod.`` of ``torch.compile``) are dropped first. Then, when the keys still do
not match the architecture:

* ``prefix`` given (``--prefix model.``): the keys under it, stripped of it, are the network; the rest is
  ignored (one note, naming a few);
* otherwise each leading one- or two-component prefix of the keys is tried; the one whose keys, stripped, are
  exactly the architecture's is taken (same note); if several are (``model.`` and ``model_ema.``) the choice is
  refused and ``--prefix`` named; if none is, the keys are left as they are for the caller's mismatch message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from calibscope.errors import InputError
from calibscope.loading.files import display

__all__ = ["WRAPPER_PREFIXES", "select_network"]

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def select_network(p: Path, state_dict: dict[str, Any], expected: set[str], *,
                   prefix: str | None = None) -> tuple[dict[str, Any], str | None]:
    """(the state_dict with the network's keys as the architecture names them, a note or None)."""
    for wrapper in WRAPPER_PREFIXES:
        if (state_dict and all(k.startswith(wrapper) for k in state_dict)
                and not any(k.startswith(wrapper) for k in expected)):
            state_dict = {k[len(wrapper):]: v for k, v in state_dict.items()}
    if prefix is not None:
        prefix = prefix if prefix.endswith(".") or not prefix else prefix + "."
        inside = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not inside:
            firsts = sorted({k.split(".", 1)[0] + "." for k in state_dict})
            raise InputError(f"--prefix {prefix!r}: no key of {display(p)} starts with it (its keys start with "
                             f"{', '.join(firsts[:8])})")
        return inside, _note(p, prefix, [k for k in state_dict if not k.startswith(prefix)])
    if set(state_dict) == expected:
        return state_dict, None
    fits = [c for c in _candidates(state_dict)
            if {k[len(c):] for k in state_dict if k.startswith(c)} == expected]
    if not fits:
        return state_dict, None
    if len(fits) > 1:
        raise InputError(f"{display(p)}: the weights under {' and '.join(repr(f) for f in fits)} each fit the "
                         f"architecture; choose one with --prefix (e.g. --prefix {fits[0]})")
    chosen = fits[0]
    network = {k[len(chosen):]: v for k, v in state_dict.items() if k.startswith(chosen)}
    return network, _note(p, chosen, [k for k in state_dict if not k.startswith(chosen)])


def _candidates(state_dict: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for key in state_dict:
        parts = key.split(".")
        for depth in (1, 2):
            if len(parts) > depth:
                candidate = ".".join(parts[:depth]) + "."
                if candidate not in found:
                    found.append(candidate)
    return found


def _note(p: Path, prefix: str, ignored: list[str]) -> str | None:
    if not ignored:
        return None
    shown = ", ".join(ignored[:4]) + (", …" if len(ignored) > 4 else "")
    return (f"{display(p)}: the network's weights are the keys under {prefix!r}; {len(ignored)} other entries "
            f"(training state such as {shown}) were ignored")
