"""``calibscope conformal``: split conformal prediction sets (LAC/THR, APS, RAPS) with a coverage gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from calibscope.cli._common import (
    HELP,
    MODEL_OPTIONS,
    EnsembleOpt,
    JsonOpt,
    LogOpt,
    McDropoutOpt,
    cli_errors,
    with_options,
)
from calibscope.workflows.conformal import DEFAULT_ALPHA, DEFAULT_METHOD


@with_options(*MODEL_OPTIONS)
def conformal(
    checkpoints: list[Path] = typer.Argument(
        ..., help="Checkpoint (.pt2, TorchScript, state_dict, safetensors) or logits "
                  "file; several with --ensemble.", show_default=False),
    val: Path = typer.Option(..., "--val", help="Labelled calibration data (its 'val' split where it has "
                             "several), exchangeable with --data; never the training data.", show_default=False),
    data: Path | None = typer.Option(None, "--data", "-d", help=HELP["data"], show_default=False),
    alpha: float = typer.Option(DEFAULT_ALPHA, "--alpha", "-a", help="Target miscoverage: sets contain the true "
                                "class with probability ≥ 1 − α."),
    method: str = typer.Option(DEFAULT_METHOD, "--method", "-m", help="lac (= THR, 1 − p_y; smallest sets), aps "
                               "(adaptive, cumulative mass) or raps (APS + rank penalty; k_reg and λ chosen on "
                               "30 %% of --val unless given)."),
    no_randomize: bool = typer.Option(False, "--no-randomize", help="APS/RAPS without the uniform tie-break: "
                                      "deterministic, conservative sets."),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="Keep empty sets (by default the top class "
                                     "joins an empty set, which can only raise coverage)."),
    k_reg: int | None = typer.Option(None, "--k-reg", help="RAPS: rank from which the penalty applies.",
                                     show_default=False),
    lam: float | None = typer.Option(None, "--lambda", help="RAPS: penalty per rank beyond k_reg.",
                                     show_default=False),
    seed: int = typer.Option(0, "--seed", help="Seed of the uniforms, of the RAPS tuning split and of the "
                             "MC-dropout masks."),
    min_coverage: float | None = typer.Option(None, "--min-coverage", help="Gate: exit 1 if the empirical "
                                              "coverage on --data is below this (e.g. 0.88).", show_default=False),
    json_: JsonOpt = False,
    log: LogOpt = None,
    out: Path | None = typer.Option(None, "--out", "-o", help=HELP["out"] + " Coverage and size against α: "
                                    "conformal_coverage.png/.svg; numbers: conformal.json.", show_default=False),
    ensemble: EnsembleOpt = False,
    mc_dropout: McDropoutOpt = None,
    **options: Any,
) -> None:
    """Conformal prediction sets: a set of classes per input that holds the true one with probability ≥ 1 − α.

    Split conformal (Vovk et al. 2005): scores of the true class on --val give the finite-sample quantile q̂
    (the ⌈(n+1)(1−α)⌉-th smallest); on --data every class with score ≤ q̂ enters the set. Reports empirical
    coverage, mean set size, coverage by set size and by class, and coverage/size against α.

    Examples:

      calibscope conformal model.pt2 --val val.npz --data test.npz --alpha 0.1

      calibscope conformal model.pt2 --val val.npz --data test.npz --method raps --out figs/

      calibscope conformal test_logits.npz --val val_logits.npz --min-coverage 0.88 --json

    Exit codes: 0 ok, 1 the coverage gate failed, 2 bad input.
    """
    with cli_errors():
        from calibscope.render import trackers

        log = trackers.check_trackers(log)
        from calibscope.cli._common import one_model, project_defaults, session_from_options
        from calibscope.errors import GateFailed
        from calibscope.render import conformal_view
        from calibscope.workflows.conformal import ConformalSettings, run_conformal

        settings = ConformalSettings(alpha=alpha, method=method.lower(), randomized=not no_randomize,
                                     allow_empty=allow_empty, k_reg=k_reg, lam=lam, seed=seed,
                                     min_coverage=min_coverage)
        session = session_from_options(data=data, defaults=project_defaults(), **options)
        name, model = one_model(checkpoints, ensemble=ensemble, mc_dropout=mc_dropout, seed=seed)
        result = run_conformal(session, model, settings, val=val, name=name)
        doc = conformal_view.document(result)
        trackers.log_run(log, name="conformal", document=doc)
        written = conformal_view.write_outputs(out, result, doc) if out is not None else None
        if json_:
            conformal_view.print_json(doc)
        else:
            conformal_view.print_tables(result, written=written)
        if result.gate is not None and not result.gate["passed"]:
            raise GateFailed(f"coverage {result.gate['coverage']:.4f} is below --min-coverage "
                             f"{result.gate['min_coverage']:g}")
