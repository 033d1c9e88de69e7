"""``calibscope hessian``: certified top Hessian eigenvalues λ1…λk, λ1/λk and trace (Foret et al. 2021)."""

from __future__ import annotations

from pathlib import Path

import typer

from calibscope.cli._common import (
    HELP,
    ArchKwargsOpt,
    ArchOpt,
    DeviceOpt,
    JsonOpt,
    LabelColumnOpt,
    LimitOpt,
    MeanOpt,
    SplitOpt,
    StdOpt,
    TrustOpt,
    cli_errors,
)


def hessian(
    checkpoints: list[Path] = typer.Argument(
        ..., help="One or more model checkpoints (.pt2, TorchScript, state_dict, safetensors), compared side "
                  "by side (e.g. SGD vs SAM).", show_default=False),
    data: Path | None = typer.Option(None, "--data", "-d", help=HELP["data"] + " Use the training data: "
                                     "the loss is the training loss.", show_default=False),
    top: int = typer.Option(5, "--top", "-k", help="How many of the largest eigenvalues (λ1…λk)."),
    examples: int = typer.Option(4096, "--examples", help="Size of the fixed, seeded subset of the data the "
                                 "loss is averaged over (all examples if the dataset is smaller)."),
    tol: float = typer.Option(1e-4, "--tol", help="Stop when every wanted eigenvalue has Lanczos residual "
                              "≤ tol·|λ|."),
    max_hvp: int = typer.Option(200, "--max-hvp", help="At most this many Hessian-vector products for the "
                                "eigenvalues (not converged otherwise, said so)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the subset, the Lanczos start vector and the "
                             "Hutchinson probes."),
    repeats: int = typer.Option(1, "--repeats", help="Rerun on R disjoint seeded subsets and report "
                                "mean ± spread (subset-to-subset variance)."),
    params: str = typer.Option("all", "--params", help="Parameters: all, last (the final layer) or a regular "
                               "expression over parameter names (e.g. 'classifier|features\\.6')."),
    bn: str = typer.Option("eval", "--bn", help="BatchNorm statistics: eval (running statistics) or train "
                           "(batch statistics; running ones left untouched)."),
    trace_samples: int = typer.Option(20, "--trace-samples", help="Hutchinson probes for the trace estimate "
                                      "(0: no trace)."),
    per_layer: bool = typer.Option(False, "--per-layer", help="Also the top eigenvalue of each layer's "
                                   "diagonal block."),
    density: bool = typer.Option(False, "--density", help="Also the spectral density by stochastic Lanczos "
                                 "quadrature (plotted with --out)."),
    json_: JsonOpt = False,
    out: Path | None = typer.Option(None, "--out", "-o", help=HELP["out"] + " Bar plot: hessian_eigenvalues."
                                    "png/.svg; numbers: hessian.json.", show_default=False),
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    trust: TrustOpt = False,
    device: DeviceOpt = None,
    batch_size: int | None = typer.Option(None, "--batch-size", "-b", help="Examples per batch of the "
                                          "Hessian-vector products (bounds memory) [default: 256].",
                                          show_default=False),
    limit: LimitOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    split: SplitOpt = None,
    label_column: LabelColumnOpt = None,
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
        from calibscope.cli._common import ModelInputs, display_names, no_data_error, project_defaults
        from calibscope.diagnostics import hessian as hs
        from calibscope.errors import InputError
        from calibscope.inference import distributed
        from calibscope.inference.device import resolve_device
        from calibscope.loading.checkpoint import load_checkpoint
        from calibscope.loading.types import LogitsCheckpoint
        from calibscope.render import hessian_view

        defaults = project_defaults()
        inputs = ModelInputs(data=data, split=split, label_column=label_column, limit=limit, arch=arch,
                             arch_kwargs=arch_kwargs, trust=trust, device=device, precision=None, batch_size=None,
                             mean=mean, std=std, no_cache=True, defaults=defaults)
        if inputs.data_path is None:
            raise no_data_error(checkpoints[0])
        bs = batch_size if batch_size is not None else hs.DEFAULT_BATCH_SIZE
        if bn not in ("eval", "train"):
            raise InputError(f"--bn must be 'eval' or 'train', got '{bn}'")
        target = resolve_device(inputs.options.device)
        options = dict(top=top, tol=tol, examples=examples, seed=seed, params=params, bn=bn, batch_size=bs,
                       max_hvp=max_hvp, trace_samples=trace_samples, per_layer=per_layer, density=density)
        group = distributed.current()
        if group is not None:  # under torchrun: each rank a part of the subset, products summed over ranks
            options.update(part=(group.rank, group.world_size), reduce=group.all_reduce_sum)

        results = []
        for name, path in zip(display_names(checkpoints), checkpoints, strict=True):
            checkpoint = load_checkpoint(path, arch=inputs.arch, arch_kwargs=inputs.arch_kwargs, trust=inputs.trust)
            if isinstance(checkpoint, LogitsCheckpoint):
                raise InputError(f"'{path}' holds precomputed logits, not a model: the Hessian needs the "
                                 "parameters (.pt2, TorchScript, state_dict or safetensors)")
            dataset = inputs.dataset
            mean_t, std_t = inputs.options.mean, inputs.options.std
            if mean_t is None and checkpoint.metadata.get("mean") is not None:
                mean_t = tuple(map(float, checkpoint.metadata["mean"]))
                std_t = tuple(map(float, checkpoint.metadata["std"]))
            model = checkpoint.module.to(target)
            run = dict(options, mean=mean_t, std=std_t)
            if repeats > 1:
                rep = hs.hessian_repeats(model, dataset.inputs, dataset.labels, repeats=repeats, **run)
                spectrum = rep.spectra[0]
            else:
                rep, spectrum = None, hs.top_hessian_eigenvalues(model, dataset.inputs, dataset.labels, **run)
            meta = {"checkpoint_sha256": checkpoint.sha256, "dataset": str(dataset.source),
                    "dataset_sha256": dataset.sha256, "normalisation": {"mean": mean_t, "std": std_t}}
            results.append(hessian_view.HessianResult(name, path, checkpoint.format, spectrum, rep, meta))

        doc = hessian_view.document(results)
        written = hessian_view.write_outputs(out, results, doc) if out is not None else None
        if json_:
            hessian_view.print_json(doc)
        else:
            hessian_view.print_tables(results, written=written)
