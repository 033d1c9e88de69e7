"""``calibscope hessian``: certified top Hessian eigenvalues λ1…λk, λ1/λk and trace (Foret et al. 2021)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from calibscope.cli._common import (
    HELP,
    JsonOpt,
    LogOpt,
    checkpoint_options,
    cli_errors,
    data_options,
    device_option,
    with_options,
)
from calibscope.diagnostics.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EXAMPLES,
    DEFAULT_HUTCHPP_HVP,
    DEFAULT_MAX_HVP,
    DEFAULT_TOL,
    DEFAULT_TOP,
    DEFAULT_TRACE_SAMPLES,
)


@with_options(checkpoint_options, device_option, data_options)
def hessian(
    checkpoints: list[Path] = typer.Argument(
        ..., help="One or more model checkpoints (.pt2, TorchScript, state_dict, safetensors), compared side "
                  "by side (e.g. SGD vs SAM).", show_default=False),
    data: Path | None = typer.Option(None, "--data", "-d", help=HELP["data"] + " Use the training data: "
                                     "the loss is the training loss.", show_default=False),
    top: int = typer.Option(DEFAULT_TOP, "--top", "-k", help="How many of the largest eigenvalues (λ1…λk)."),
    examples: int = typer.Option(DEFAULT_EXAMPLES, "--examples", help="Size of the fixed, seeded subset of the "
                                 "data the loss is averaged over (all examples if the dataset is smaller)."),
    tol: float = typer.Option(DEFAULT_TOL, "--tol", help="Stop when every wanted eigenvalue has Lanczos residual "
                              "≤ tol·|λ|."),
    max_hvp: int = typer.Option(DEFAULT_MAX_HVP, "--max-hvp", help="At most this many Hessian-vector products for the "
                                "eigenvalues (not converged otherwise, said so)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the subset, the Lanczos start vector and the "
                             "Hutchinson probes."),
    repeats: int = typer.Option(1, "--repeats", help="Rerun on R disjoint seeded subsets and report "
                                "mean ± spread (subset-to-subset variance)."),
    params: str = typer.Option("all", "--params", help="Parameters: all, last (the final layer) or a regular "
                               "expression over parameter names (e.g. 'classifier|features\\.6')."),
    bn: str = typer.Option("eval", "--bn", help="BatchNorm statistics: eval (running statistics) or train "
                           "(batch statistics; running ones left untouched)."),
    trace_samples: int = typer.Option(DEFAULT_TRACE_SAMPLES, "--trace-samples", help="Hutchinson probes for the "
                                      "trace estimate (0: no trace)."),
    trace_method: str = typer.Option("hutchinson", "--trace-method", help="Trace estimator: hutchinson, hutchpp "
                                     "(Hutch++, Meyer et al. 2021: a sketch of the top of the spectrum taken "
                                     "exactly, Hutchinson on the rest) or both, side by side at the same number "
                                     "of Hessian-vector products, each with its standard error."),
    trace_hvps: int | None = typer.Option(None, "--trace-hvps", help="Hessian-vector products per trace estimate "
                                          "(a multiple of 3 for hutchpp/both) [default: --trace-samples for "
                                          f"hutchinson, {DEFAULT_HUTCHPP_HVP} for hutchpp/both].",
                                          show_default=False),
    per_layer: bool = typer.Option(False, "--per-layer", help="Also the top eigenvalue of each layer's "
                                   "diagonal block."),
    density: bool = typer.Option(False, "--density", help="Also the spectral density by stochastic Lanczos "
                                 "quadrature (plotted with --out)."),
    json_: JsonOpt = False,
    log: LogOpt = None,
    out: Path | None = typer.Option(None, "--out", "-o", help=HELP["out"] + " Plot: hessian_eigenvalues."
                                    "png/.svg; numbers: hessian.json.", show_default=False),
    batch_size: int = typer.Option(DEFAULT_BATCH_SIZE, "--batch-size", "-b", help="Examples per batch of the "
                                   "Hessian-vector products (bounds memory)."),
    **options: Any,
) -> None:
    """Top Hessian eigenvalues λ1…λk of the training loss, λ1/λk, and the Hutchinson trace.

    Loss: mean cross-entropy over a fixed seeded subset (default 4096 examples), model in eval mode, fp32 with
    TF32 off. Lanczos with full reorthogonalisation stops when every wanted eigenvalue has residual
    ≤ tol·|λ| — a certificate, not a loose power-iteration guess. SAM (Foret et al. 2021) reports λ1 and
    λ1/λ5: lower means a flatter minimum.

    Examples:

      calibscope hessian sgd.pt2 sam.pt2 --data train.npz

      calibscope hessian model.pt2 --data train.npz --repeats 3 --per-layer --out figs/

      calibscope hessian weights.safetensors --arch torchvision:resnet18 --data train/ --params last --json
    """
    with cli_errors():
        from calibscope.render import trackers

        log = trackers.check_trackers(log)
        from calibscope.cli._common import check_outputs

        check_outputs(folders={"--out": out})
        from calibscope.cli._common import display_names, project_defaults, session_from_options
        from calibscope.render import hessian_view
        from calibscope.workflows.hessian import HessianSettings, run_hessian

        settings = HessianSettings(top=top, examples=examples, tol=tol, max_hvp=max_hvp, seed=seed, repeats=repeats,
                                   params=params, bn=bn, trace_samples=trace_samples, trace_method=trace_method,
                                   trace_hvps=trace_hvps, per_layer=per_layer,
                                   density=density, batch_size=batch_size)
        session = session_from_options(data=data, no_cache=True, defaults=project_defaults(), **options)
        results = run_hessian(session, checkpoints, settings, names=display_names(checkpoints))
        doc = hessian_view.document(results)
        trackers.log_run(log, name="hessian", document=doc)
        written = hessian_view.write_outputs(out, results, doc) if out is not None else None
        if json_:
            hessian_view.print_json(doc)
        else:
            hessian_view.print_tables(results, written=written)
