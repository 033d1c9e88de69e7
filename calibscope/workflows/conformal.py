"""Split conformal prediction sets of one checkpoint (``calibscope conformal``): calibrate on ``--val``, measure
coverage and set sizes on the session's data (``--data``), and the optional coverage gate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from calibscope.errors import ArgumentError

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.results import ConformalResult
    from calibscope.workflows.session import Session

# the diagnostics' defaults, restated torch-free for --help (tests/workflows check they agree)
DEFAULT_ALPHA = 0.1
DEFAULT_METHOD = "lac"
METHODS = ("lac", "aps", "raps")
DEFAULT_ALPHA_GRID = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)


@dataclass(frozen=True)
class ConformalSettings:
    """``alpha``: target miscoverage; ``method``: lac (THR), aps or raps; ``randomized``: APS/RAPS with one
    uniform per example (exact coverage) or not (conservative); ``allow_empty``: keep empty sets (else the top
    class joins them); ``k_reg``/``lam``: RAPS parameters (None: chosen on 30 % of VAL); ``min_coverage``: gate."""

    alpha: float = DEFAULT_ALPHA
    method: str = DEFAULT_METHOD
    randomized: bool = True
    allow_empty: bool = False
    k_reg: int | None = None
    lam: float | None = None
    seed: int = 0
    alphas: tuple[float, ...] = DEFAULT_ALPHA_GRID
    min_coverage: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not 0 < self.alpha < 1:
            raise ArgumentError("alpha", f"`alpha` must be a number in (0, 1), got {self.alpha!r}")
        if self.method not in METHODS:
            raise ArgumentError("method", f"`method` must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.min_coverage is not None and not 0 <= self.min_coverage <= 1:
            raise ArgumentError("min_coverage", f"`min_coverage` must be in [0, 1], got {self.min_coverage!r}")
        if self.k_reg is not None and (isinstance(self.k_reg, bool) or self.k_reg < 1):
            raise ArgumentError("k_reg", f"`k_reg` must be a positive integer, got {self.k_reg!r}")
        if self.lam is not None and not self.lam >= 0:
            raise ArgumentError("lam", f"`lam` must be ≥ 0, got {self.lam!r}")
        if any(not 0 < a < 1 for a in self.alphas):
            raise ArgumentError("alphas", f"every α of `alphas` must be in (0, 1), got {self.alphas!r}")
        object.__setattr__(self, "alphas", tuple(sorted({float(a) for a in self.alphas} | {float(self.alpha)})))


def run_conformal(session: Session, checkpoint: Path | str, settings: ConformalSettings | None = None, *,
                  val: Path | str, name: str | None = None) -> ConformalResult:
    """Calibrate on ``val`` (its ``val`` split where it has several), evaluate on the session's data. With a
    logits file as checkpoint, ``val`` is a logits file (with labels) too."""
    from calibscope.diagnostics.conformal import conformal_report
    from calibscope.results import ConformalResult
    from calibscope.workflows.ensemble import as_model_ref, require_model_members

    s = settings or ConformalSettings()
    path = as_model_ref(checkpoint)
    outputs, ckpt = session.outputs(path)
    if outputs.labels is None:
        raise ArgumentError("data", f"'{session.source(path)}' holds no labels; coverage needs them")
    from calibscope.loading.types import LogitsCheckpoint, LogitsRows

    if isinstance(ckpt, LogitsCheckpoint | LogitsRows):  # logits in, logits for calibration: --val is a logits file too
        cal_outputs, _ = session.for_data(None).outputs(Path(val))
    else:
        require_model_members(ckpt, f"the calibration data '{val}'")
        cal_outputs, _ = session.for_data(val, prefer_split="val").outputs(path)
    if cal_outputs.logits.shape[1] != outputs.logits.shape[1]:
        raise ArgumentError("val", f"'{val}' gives {cal_outputs.logits.shape[1]} classes but the test data "
                            f"{outputs.logits.shape[1]}")
    if cal_outputs.labels is None:
        raise ArgumentError("val", f"'{val}' holds no labels; conformal calibration needs them")
    report = conformal_report(cal_outputs.logits, cal_outputs.labels, outputs.logits, outputs.labels,
                              method=s.method, alpha=s.alpha, alphas=s.alphas, randomized=s.randomized,
                              allow_empty=s.allow_empty, k_reg=s.k_reg, lam=s.lam, seed=s.seed)
    gate = None
    if s.min_coverage is not None:
        gate = {"min_coverage": s.min_coverage, "coverage": report.coverage,
                "passed": report.coverage >= s.min_coverage}
    return ConformalResult(name=name or path.name, path=path, format=ckpt.format,
                           data={"test": str(session.data_path) if session.data_path is not None else None,
                                 "val": str(val)},
                           report=report, inference={"test": outputs.meta, "val": cal_outputs.meta}, gate=gate)
