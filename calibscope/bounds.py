"""Documented upper bounds of numeric options, defined once (no torch: the command line imports this).

=================  ==================  ===========================================================================
option             bound               why
=================  ==================  ===========================================================================
``--seed``         0 … 2⁶³ − 1         ``torch.Generator.manual_seed`` takes a 64-bit integer
``--bins``         1 … 10 000          per-bin statistics, tables and plots are O(bins); 10⁷ bins took 7.8 GB
``--bootstrap``    0, 200 … 100 000    replicates × bins of statistics; 10⁷ replicates took 4 GB (and hours)
=================  ==================  ===========================================================================
"""

from __future__ import annotations

import numbers
from typing import Any

from calibscope.diagnostics.defaults import MAX_BINS, MAX_BOOTSTRAP, MAX_SEED
from calibscope.errors import ArgumentError

__all__ = ["MAX_BINS", "MAX_BOOTSTRAP", "MAX_SEED", "check_seed", "check_upper"]


def check_seed(seed: Any, name: str = "seed") -> int:
    """``seed`` as an int in [0, :data:`MAX_SEED`], else InputError naming the bound."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise ArgumentError(name, f"Expected argument `{name}` to be an integer from 0 to 2**63 - 1 ({MAX_SEED}), "
                                  f"but got {seed!r}")
    return int(seed)


def check_upper(value: Any, bound: int, name: str) -> None:
    """InputError when an integer option exceeds its documented bound."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > bound:
        raise ArgumentError(name, f"Expected argument `{name}` to be at most {bound:,}, but got {value:,} "
                                  "(see calibscope.bounds for why)")
