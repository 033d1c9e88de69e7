"""What a report holds: the models, one :class:`Section` per diagnostic (computed, or skipped with the reason),
the threshold checks and the provenance — the data model that :mod:`calibscope.render.report_sections` draws
and :mod:`calibscope.render.report_html` lays out. Built by :func:`calibscope.workflows.report.run_report`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from calibscope.results import GateCheck as Check

__all__ = ["SECTIONS", "Check", "FigureFormat", "ModelInfo", "Report", "Section"]

# every diagnostic section, in page order, with its heading
SECTIONS: dict[str, str] = {
    "calibration": "Calibration",
    "corp": "CORP reliability and score decomposition",
    "temperature": "Temperature scaling",
    "calibrate": "Calibrators compared",
    "selective": "Selective classification",
    "conformal": "Conformal prediction sets",
    "ood": "Out-of-distribution detection",
    "projection": "Penultimate-layer projections",
    "mi": "Logit-gap mutual information",
    "hessian": "Top Hessian eigenvalues",
    "distill": "Soft targets and distillation",
}
FigureFormat = Literal["auto", "svg", "png"]


# --------------------------------------------------------------------------------------------------------
# what a report holds
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """One checkpoint of the report (a column of every table)."""

    name: str
    path: Path
    format: str
    sha256: str | None = None


@dataclass(frozen=True)
class Section:
    """One diagnostic. ``status`` ``"ok"``: ``results`` holds the view-level results the section's command
    builds (e.g. a list of :class:`~calibscope.render.ece_view.EceResult`) and ``document`` its JSON;
    ``"skipped"``: ``note`` says why (missing inputs, or the one-line message of the input error).
    ``notes`` are caveats shown with a computed section (e.g. a model left out of it)."""

    key: str
    status: Literal["ok", "skipped"]
    note: str | None = None
    results: Any = None
    document: Any = None
    notes: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return SECTIONS.get(self.key, self.key)


@dataclass(frozen=True)
class Report:
    """Everything one ``calibscope report`` / ``compare`` run measured, ready to render.

    ``data``: role (``test``, ``val``, ``train``, ``ood``) → ``{"path", "sha256", "n", "format"}`` or None;
    ``thresholds``: the configured gates (None when not set); ``settings``: the options that change numbers;
    ``provenance``: versions, devices, precisions, hashes and seeds; ``generated``: ISO 8601 time (UTC).
    """

    command: Literal["report", "compare"]
    title: str
    models: tuple[ModelInfo, ...]
    sections: tuple[Section, ...]
    checks: tuple[Check, ...] = ()
    thresholds: dict[str, float | None] = field(default_factory=dict)
    data: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    generated: str = ""

    def section(self, key: str) -> Section | None:
        for s in self.sections:
            if s.key == key:
                return s
        return None

    @property
    def passed(self) -> bool | None:
        """True / False when thresholds were checked, None when none was configured."""
        if not self.checks:
            return None
        return all(c.passed for c in self.checks)
