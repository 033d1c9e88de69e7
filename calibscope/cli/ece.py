"""``calibscope ece``: expected calibration error (Guo et al. 2017) and friends for one or more checkpoints."""

from __future__ import annotations

from pathlib import Path

import typer

from calibscope.cli._common import HELP, cli_errors


def ece(
    checkpoints: list[Path] = typer.Argument(
        ..., help="One or more checkpoints (.pt2, TorchScript, state_dict, safetensors, logits file), "
                  "compared side by side.", show_default=False),
    data: Path | None = typer.Option(None, "--data", "-d", help=HELP["data"], show_default=False),
    bins: int | None = typer.Option(None, "--bins", help="Number of equal-width confidence bins \\[default: 15, "
                                    "as in Guo et al. 2017 and Müller et al. 2019].", show_default=False),
    max_ece: float | None = typer.Option(None, "--max-ece", help="Gate: exit 1 if any checkpoint's ECE is "
                                         "above this (e.g. 0.05).", show_default=False),
    json_: bool = typer.Option(False, "--json", help=HELP["json"]),
    out: Path | None = typer.Option(None, "--out", "-o", help=HELP["out"] + " Reliability diagrams: "
                                    "reliability_NAME.png/.svg; numbers: ece.json.", show_default=False),
    arch: str | None = typer.Option(None, "--arch", help=HELP["arch"], show_default=False),
    arch_kwargs: str | None = typer.Option(None, "--arch-kwargs", help=HELP["arch_kwargs"], show_default=False),
    trust: bool = typer.Option(False, "--trust", help=HELP["trust"]),
    device: str | None = typer.Option(None, "--device", help=HELP["device"] + " \\[default: auto]",
                                      show_default=False),
    precision: str | None = typer.Option(None, "--precision", help=HELP["precision"], show_default=False),
    batch_size: int | None = typer.Option(None, "--batch-size", "-b", help=HELP["batch_size"] +
                                          " \\[default: 1024]", show_default=False),
    limit: int | None = typer.Option(None, "--limit", help=HELP["limit"], show_default=False),
    mean: str | None = typer.Option(None, "--mean", help=HELP["mean"], show_default=False),
    std: str | None = typer.Option(None, "--std", help=HELP["std"], show_default=False),
    split: str | None = typer.Option(None, "--split", help=HELP["split"], show_default=False),
    label_column: str | None = typer.Option(None, "--label-column", help=HELP["label_column"],
                                            show_default=False),
    no_cache: bool = typer.Option(False, "--no-cache", help=HELP["no_cache"]),
) -> None:
    """Expected calibration error, MCE, NLL, Brier and accuracy, with the per-bin table.

    ECE = Σ_m |B_m|/n · |acc(B_m) − conf(B_m)| over M equal-width bins of the top-label confidence,
    right-closed ((m−1)/M, m/M] (Guo et al. 2017). Several checkpoints are shown side by side.

    Examples:

      calibscope ece model.pt2 --data test.npz

      calibscope ece a.pt2 b.pt2 --data test.npz --out figs/ --max-ece 0.05

      calibscope ece weights.safetensors --arch torchvision:resnet18 --data imagenet_val/ --json
    """
    with cli_errors():
        from calibscope.cli._common import ModelInputs, display_names, pick, project_defaults
        from calibscope.diagnostics.calibration import calibration_report
        from calibscope.errors import GateFailed, InputError

        defaults = project_defaults()
        n_bins = pick(bins, defaults, "bins", 15)
        if n_bins < 1:
            raise InputError(f"--bins must be a positive integer, got {n_bins}")
        gate = pick(max_ece, defaults, "max_ece", None)
        inputs = ModelInputs(data=data, split=split, label_column=label_column, limit=limit, arch=arch,
                             arch_kwargs=arch_kwargs, trust=trust, device=device, precision=precision,
                             batch_size=batch_size, mean=mean, std=std, no_cache=no_cache, defaults=defaults)
        from calibscope.render import ece_view

        results = []
        for name, path in zip(display_names(checkpoints), checkpoints, strict=True):
            outputs, checkpoint = inputs.outputs(path)
            report = calibration_report(outputs.logits, outputs.labels, n_bins=n_bins)
            results.append(ece_view.EceResult(name, path, checkpoint.format, report, outputs.meta))

        doc = ece_view.document(results, gate=gate)
        written = ece_view.write_outputs(out, results, doc) if out is not None else None
        if json_:
            ece_view.print_json(doc)
        else:
            ece_view.print_tables(results, written=written)
        failing = [r for r in results if gate is not None and r.report.ece > gate]
        if failing:
            detail = ", ".join(f"{r.name} ECE {r.report.ece:.4f}" for r in failing)
            raise GateFailed(f"{detail} > --max-ece {gate}")
