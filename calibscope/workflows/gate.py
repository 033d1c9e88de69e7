"""The quality gate: thresholds applied to results, for ``calibscope ece``, ``temperature`` and ``report``.

:class:`Check` is one threshold applied to one checkpoint, :class:`Gate` the set of checks of one run, and
:class:`Baseline` an earlier ``calibscope ece --json`` document to compare with. The functions here only
compare: every number comes from the results. A failed gate is not raised here; the caller decides (the CLI
exits 1 with :class:`~calibscope.errors.GateFailed`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibscope.results import Gate
from calibscope.results import GateCheck as Check

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.results import EceResult, HessianResult

__all__ = ["Baseline", "Check", "Gate", "ece_gate", "lambda1_checks", "read_baseline", "METRIC_LABELS"]

METRIC_LABELS = {"ece": "ECE", "ece_l2": "ECE ℓ2", "mce": "MCE"}


def ece_checks(results: Sequence[EceResult], *, max_ece: float | None = None,
               max_increase: float | None = None) -> list[Check]:
    """``max_ece``: each result's headline ECE must not exceed it; ``max_increase``: nor rise by more than it
    over the result's baseline (results compared with :meth:`Baseline.compare`)."""
    checks = []
    for r in results:
        label = METRIC_LABELS.get(r.headline, r.headline)
        if max_ece is not None:
            ok = not r.value > max_ece
            checks.append(Check(r.name, "max_ece", r.headline, r.value, max_ece, ok,
                                f"{r.name} {label} {r.value:.4f} {'≤' if ok else '>'} --max-ece {max_ece:g}"))
        if max_increase is not None and r.baseline is not None:
            delta = r.baseline["delta"]
            ok = not delta > max_increase
            checks.append(Check(
                r.name, "max_increase", r.headline, r.value, max_increase, ok,
                f"{r.name} {label} {r.value:.4f} vs baseline {r.baseline['value']:.4f}: {delta:+.4f} "
                f"{'≤' if ok else '>'} --max-increase {max_increase:g}"))
    return checks


def ece_gate(results: Sequence[EceResult], *, max_ece: float | None = None, max_increase: float | None = None,
             baseline: Baseline | None = None) -> Gate:
    """The gate of ``calibscope ece``: :func:`ece_checks` with the thresholds and the baseline recorded."""
    return Gate(max_ece=max_ece, max_increase=max_increase if baseline is not None else None,
                baseline=None if baseline is None else str(baseline.path),
                checks=tuple(ece_checks(results, max_ece=max_ece, max_increase=max_increase)))


def lambda1_checks(results: Sequence[HessianResult], max_lambda1: float) -> list[Check]:
    """Each model's top Hessian eigenvalue λ1 must not exceed ``max_lambda1``."""
    checks = []
    for r in results:
        value = r.spectrum.eigenvalues[0]
        ok = not value > max_lambda1
        checks.append(Check(r.name, "max_lambda1", "lambda1", value, max_lambda1, ok,
                            f"{r.name} λ1 {value:.5g} {'≤' if ok else '>'} --max-lambda1 {max_lambda1:g}"))
    return checks


_COMPARABLE_KEYS = ("binning", "n_bins", "edges", "norm", "calibration", "debiased")
_ASCII_LABELS = {"ece": "ECE", "ece_l2": "ECE l2", "mce": "MCE"}


@dataclass(frozen=True)
class Baseline:
    """An earlier ``calibscope/ece`` document, read by :func:`read_baseline`."""

    path: Path
    entries: tuple[dict[str, Any], ...]

    def _entry(self, name: str, n_results: int) -> dict[str, Any]:
        from calibscope.errors import InputError

        for entry in self.entries:
            if entry.get("name") == name:
                return entry
        if len(self.entries) == 1 and n_results == 1:
            return self.entries[0]
        names = ", ".join(str(e.get("name")) for e in self.entries) or "none"
        raise InputError(f"the baseline '{self.path}' has no result named '{name}' (it has: {names}); give the "
                         "checkpoints the same file names as in the baseline run")

    def _value(self, entry: dict[str, Any], headline: str) -> tuple[float, dict[str, Any]]:
        from calibscope.errors import InputError

        metrics = entry.get("metrics")
        if isinstance(metrics, dict) and isinstance(metrics.get(headline), dict):
            metric = metrics[headline]
            return metric.get("value"), metric.get("definition") or {}
        definition = entry.get("definition") if isinstance(entry.get("definition"), dict) else {}
        norm = {"ece": "l1", "ece_l2": "l2", "mce": "max"}[headline]
        if headline == "mce" and "mce" in entry:
            return entry["mce"], {**definition, "norm": "max"}
        if definition.get("norm", "l1") == norm and "ece" in entry:
            return entry["ece"], definition
        raise InputError(f"the baseline '{self.path}' holds no {_ASCII_LABELS[headline]} for '{entry.get('name')}'; "
                         "re-create it with this version of calibscope and the same --norm")

    def compare(self, r: EceResult, *, n_results: int) -> EceResult:
        """``r`` with ``baseline`` filled in; raises InputError when the two numbers are not comparable."""
        import dataclasses

        from calibscope.errors import InputError

        entry = self._entry(r.name, n_results)
        value, theirs = self._value(entry, r.headline)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise InputError(f"the baseline '{self.path}' has no number for {_ASCII_LABELS[r.headline]} of "
                             f"'{entry.get('name')}' (got {value!r})")
        ours = r.metrics[r.headline].definition if r.metrics is not None else {}
        differ = [f"{key} {theirs[key]!r} there, {ours[key]!r} here" for key in _COMPARABLE_KEYS
                  if key in theirs and key in ours and theirs[key] != ours[key]]
        if differ:
            raise InputError(f"the baseline '{self.path}' computed {_ASCII_LABELS[r.headline]} differently ("
                             + "; ".join(differ) + "): the numbers are not comparable; re-run the baseline with "
                             "the same --bins and --norm")
        warnings = list(r.warnings)
        n_there = entry.get("n")
        if isinstance(n_there, int) and n_there != r.report.n:
            warnings.append(f"the baseline was measured on {n_there} examples, this run on {r.report.n}: "
                            "different evaluation data?")
        t_there = (entry.get("temperature") or {}).get("value") if isinstance(entry.get("temperature"), dict) else None
        t_here = None if r.temperature is None else r.temperature["value"]
        if t_there != t_here:
            warnings.append(f"the baseline used temperature {t_there}, this run {t_here}")
        info = {"path": str(self.path), "name": entry.get("name"), "value": float(value),
                "delta": r.value - float(value), "n": n_there}
        return dataclasses.replace(r, baseline=info, warnings=tuple(warnings))


def read_baseline(path: Path) -> Baseline:
    """Read an earlier ``calibscope ece --json`` document (``--baseline``); InputError with the reason if it
    cannot be used."""

    from calibscope.errors import InputError
    from calibscope.loading.files import read_json_file
    from calibscope.render.json_doc import SCHEMA_VERSION

    doc = read_json_file(path, "the baseline", expected="a `calibscope ece --json` document",
                         missing=f"create it with `calibscope ece ... --json > {path}` on the reference model")
    if not isinstance(doc, dict) or doc.get("schema") != "calibscope/ece":
        schema = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(f"the baseline '{path}' is not a `calibscope ece --json` document (schema {schema!r})")
    version = doc.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise InputError(f"the baseline '{path}' has schema_version {version!r}; this calibscope reads up to "
                         f"{SCHEMA_VERSION}")
    results = doc.get("results")
    if not isinstance(results, list) or not all(isinstance(e, dict) for e in results) or not results:
        raise InputError(f"the baseline '{path}' holds no results")
    return Baseline(Path(path), tuple(results))
