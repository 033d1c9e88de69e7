"""``calibscope temperature``: fit the temperature of softmax(z / T) (Guo et al. 2017, §4.2) on one data set,
report the calibration before and after, on that set and (``--apply``) on a held-out one."""

from __future__ import annotations

from pathlib import Path

import typer

from calibscope.cli._common import (
    HELP,
    ArchKwargsOpt,
    ArchOpt,
    BatchSizeOpt,
    DeviceOpt,
    JsonOpt,
    LabelColumnOpt,
    LimitOpt,
    MeanOpt,
    NoCacheOpt,
    PrecisionOpt,
    SplitOpt,
    StdOpt,
    TrustOpt,
    cli_errors,
)


def temperature(
    checkpoint: Path = typer.Argument(..., help="Checkpoint (.pt2, TorchScript, state_dict, safetensors) or "
                                      "logits file to fit a temperature for.", show_default=False),
    data: Path | None = typer.Option(None, "--data", "-d", help="Data to fit T on (a validation split). "
                                     + HELP["data"], show_default=False),
    apply: Path | None = typer.Option(None, "--apply", help="Held-out data to apply T to and report on (a "
                                      "dataset; for a logits-file checkpoint, another logits file).",
                                      show_default=False),
    objective: str = typer.Option("nll", "--objective", help="Which temperature to choose: nll (the exact "
                                  "NLL optimum, Guo et al.) or ece (the ECE optimum, by search)."),
    bins: int | None = typer.Option(None, "--bins", help="Number of equal-width confidence bins for ECE "
                                    "[default: 15].", show_default=False),
    save_temperature: Path | None = typer.Option(None, "--save-temperature", help="Write the result (T and how "
                                                 "it was fitted) to this JSON file, for `calibscope ece "
                                                 "--temperature-from`.", show_default=False),
    json_: JsonOpt = False,
    out: Path | None = typer.Option(None, "--out", "-o", help=HELP["out"] + " temperature_sweep.png/.svg "
                                    "(ECE and NLL against T), reliability_before/after, temperature.json.",
                                    show_default=False),
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    trust: TrustOpt = False,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    batch_size: BatchSizeOpt = None,
    limit: LimitOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    split: SplitOpt = None,
    label_column: LabelColumnOpt = None,
    no_cache: NoCacheOpt = False,
) -> None:
    """Fit the temperature T of softmax(z / T): the exact NLL optimum (safeguarded Newton on 1/T) and the
    ECE optimum (search), with a sweep of T from 0.05 to 20 and ECE/NLL/Brier before and after.

    Examples:

      calibscope temperature model.pt2 --data val.npz --apply test.npz --out figs/

      calibscope temperature model.pt2 --data val.npz --save-temperature t.json

      calibscope ece model.pt2 --data test.npz --temperature-from t.json
    """
    with cli_errors():
        from calibscope.cli._common import ModelInputs, display_names, echo_err, pick, project_defaults
        from calibscope.diagnostics.calibration import streamed_calibration_metrics
        from calibscope.diagnostics.temperature import apply_temperature, fit_temperature, temperature_sweep
        from calibscope.errors import InputError
        from calibscope.inference import distributed
        from calibscope.render import temperature_view as view

        if objective not in ("nll", "ece"):
            raise InputError(f"--objective must be nll or ece, got '{objective}'")
        defaults = project_defaults()
        n_bins = pick(bins, defaults, "bins", 15)
        if n_bins < 1:
            raise InputError(f"--bins must be a positive integer, got {n_bins}")
        options = dict(split=split, label_column=label_column, limit=limit, arch=arch, arch_kwargs=arch_kwargs,
                       trust=trust, device=device, precision=precision, batch_size=batch_size, mean=mean,
                       std=std, no_cache=no_cache, defaults=defaults)
        # this process's rows (all of them for one process); under torchrun every pass sums over the ranks
        group = distributed.current()
        reduce = None if group is None else group.all_reduce_sum
        gather = None if group is None else group.all_gather_rows
        inputs = ModelInputs(data=data, **options)
        outputs, ckpt = inputs.output_shard(checkpoint)
        fit_source = str(inputs.data_path) if inputs.data_path is not None else str(checkpoint)
        logits, labels = outputs.logits(), outputs.labels
        warnings: list[str] = []
        held_out = None
        if apply is not None:  # load and check the held-out data before any fitting
            from calibscope.loading.types import LogitsCheckpoint, LogitsRows

            if isinstance(ckpt, (LogitsCheckpoint, LogitsRows)):  # held-out logits of the same model, elsewhere
                held_out, _ = ModelInputs(data=None, **options).output_shard(apply)
            else:  # the same model on other data: reuse the loaded checkpoint
                from calibscope.inference.pipeline import output_shard

                other = ModelInputs(data=apply, **options)
                held_out = output_shard(ckpt, other.dataset, other.options, use_cache=other.use_cache)
            if held_out.num_classes != outputs.num_classes:
                raise InputError(f"--apply data '{apply}' gives {held_out.num_classes} classes but the fit data "
                                 f"gives {outputs.num_classes}: a temperature only transfers between outputs of "
                                 "the same model")

        try:
            nll_fit = fit_temperature(logits, labels, objective="nll", reduce=reduce, first_row=outputs.start)
        except InputError as exc:
            if objective == "nll":
                raise
            nll_fit = None
            warnings.append(f"no NLL-optimal temperature: {exc}")
        ece_fit = fit_temperature(logits, labels, objective="ece", n_bins=n_bins, reduce=reduce)
        chosen = nll_fit if objective == "nll" else ece_fit
        t = chosen.temperature
        if objective == "ece" and ece_fit.stop_reason == "bound":
            warnings.append(f"the ECE minimum lies at the edge of the searched range (T = {t:.3g})")

        def metrics(z, y):
            return streamed_calibration_metrics([(z, y)], num_classes=outputs.num_classes, n_bins=n_bins,
                                                reduce=reduce, gather=gather)

        def evaluate(z, y, source, meta):
            return view.Evaluation(
                source=source, fingerprint=view.data_fingerprint(meta),
                before=metrics(z, y), after=metrics(apply_temperature(z, t), y),
                sweep=temperature_sweep(z, y, n_bins=n_bins, reduce=reduce))

        fit_eval = evaluate(logits, labels, fit_source, outputs.meta)
        apply_eval = None
        if held_out is not None:
            apply_eval = evaluate(held_out.logits(), held_out.labels, str(apply), held_out.meta)
            if view.same_data(fit_eval.fingerprint, apply_eval.fingerprint):
                warnings.append("--apply data is the fit data (same content hash): the 'apply' numbers are not "
                                "held-out")

        result = view.TemperatureResult(
            name=display_names([checkpoint])[0], path=checkpoint, format=ckpt.format,
            checkpoint_sha256=outputs.meta.get("checkpoint_sha256"), objective=objective, nll_fit=nll_fit,
            ece_fit=ece_fit, fit=fit_eval, apply=apply_eval, inference=outputs.meta, warnings=tuple(warnings))
        doc = view.document(result)
        for w in warnings:
            echo_err(f"warning: {w}")
        written = view.write_outputs(out, result, doc) if out is not None else None
        if save_temperature is not None:
            view.save_temperature(save_temperature, doc)
        if json_:
            view.print_json(doc)
        else:
            view.print_tables(result, written=written)
