"""``calibscope ece``: expected calibration error (Guo et al. 2017) and friends for one or more checkpoints,
and the CI gate (``--max-ece``, ``--baseline`` + ``--max-increase``, ``--junit``)."""

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


def ece(
    checkpoints: list[Path] = typer.Argument(
        ..., help="One or more checkpoints (.pt2, TorchScript, state_dict, safetensors, logits file), "
                  "compared side by side.", show_default=False),
    data: Path | None = typer.Option(None, "--data", "-d", help=HELP["data"], show_default=False),
    bins: int | None = typer.Option(None, "--bins", help="Number of equal-width confidence bins [default: 15, "
                                    "as in Guo et al. 2017 and Müller et al. 2019].", show_default=False),
    norm: str | None = typer.Option(None, "--norm", help="Which ECE is reported as `ece` and gated: l1 (the "
                                    "usual ECE), l2 (RMS) or max (MCE) [default: l1].", show_default=False),
    all_: bool = typer.Option(False, "--all", help="Show every metric: also ℓ2 and debiased ℓ2 ECE (Kumar "
                              "2019), ACE (equal-mass bins), classwise ECE (SCE) and smooth ECE."),
    bootstrap: int = typer.Option(0, "--bootstrap", help="Bootstrap confidence intervals from N resamples of "
                                  "the examples (N ≥ 200; 0 = off).", show_default=False),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap resampling."),
    bins_csv: Path | None = typer.Option(None, "--bins-csv", help="Write the per-bin table (every checkpoint) "
                                         "to this CSV file.", show_default=False),
    temperature: float | None = typer.Option(None, "--temperature", "-T", help="Divide the logits by this "
                                             "temperature first (e.g. one fitted by `calibscope temperature`).",
                                             show_default=False),
    temperature_from: Path | None = typer.Option(None, "--temperature-from", help="Read the temperature from a "
                                                 "file written by `calibscope temperature --save-temperature`.",
                                                 show_default=False),
    max_ece: float | None = typer.Option(None, "--max-ece", help="Gate: exit 1 if any checkpoint's ECE is "
                                         "above this (e.g. 0.05).", show_default=False),
    baseline: Path | None = typer.Option(None, "--baseline", help="An earlier `calibscope ece --json` document "
                                         "to compare with (matched by checkpoint name).", show_default=False),
    max_increase: float | None = typer.Option(None, "--max-increase", help="Gate: exit 1 if ECE rose by more "
                                              "than this over --baseline (e.g. 0.005).", show_default=False),
    junit: Path | None = typer.Option(None, "--junit", help="Write the gate's result as JUnit XML (shown by "
                                      "GitLab, Jenkins, GitHub test reporters).", show_default=False),
    json_: JsonOpt = False,
    out: Path | None = typer.Option(None, "--out", "-o", help=HELP["out"] + " Reliability diagrams: "
                                    "reliability_NAME.png/.svg; numbers: ece.json.", show_default=False),
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
    """Expected calibration error and its family (MCE, ℓ2, debiased ℓ2, ACE, classwise, smooth ECE), NLL,
    Brier and accuracy, with the per-bin table; a CI gate.

    ECE = Σ_m |B_m|/n · |acc(B_m) − conf(B_m)| over M equal-width bins of the top-label confidence,
    right-closed ((m−1)/M, m/M] (Guo et al. 2017). Several checkpoints are shown side by side. Exit codes:
    0 ok, 1 a gate failed, 2 bad input.

    Examples:

      calibscope ece model.pt2 --data test.npz --all --bootstrap 1000

      calibscope ece a.pt2 b.pt2 --data test.npz --out figs/ --max-ece 0.05

      calibscope ece model.pt2 --baseline main-ece.json --max-increase 0.005 --junit ece.xml

      calibscope ece model.pt2 --data test.npz --temperature-from t.json
    """
    with cli_errors():
        from calibscope.cli._common import ModelInputs, display_names, echo_err, pick, project_defaults
        from calibscope.diagnostics.calibration import calibration_metrics, streamed_calibration_metrics
        from calibscope.diagnostics.temperature import apply_temperature
        from calibscope.errors import GateFailed, InputError
        from calibscope.inference import distributed
        from calibscope.render import ece_view, temperature_view

        defaults = project_defaults()
        n_bins = pick(bins, defaults, "bins", 15)
        if n_bins < 1:
            raise InputError(f"--bins must be a positive integer, got {n_bins}")
        norm_ = pick(norm, defaults, "norm", "l1")
        if norm_ not in ece_view.HEADLINE:
            raise InputError(f"--norm must be one of l1, l2, max, got '{norm_}'")
        if bootstrap != 0 and bootstrap < 200:
            raise InputError(f"--bootstrap needs at least 200 resamples for a 95 % interval, got {bootstrap} "
                             "(0 turns it off)")
        if seed < 0:
            raise InputError(f"--seed must be 0 or more, got {seed}")
        gate_ece = pick(max_ece, defaults, "max_ece", None)
        baseline_path = pick(baseline, defaults, "baseline", None)
        increase = pick(max_increase, defaults, "max_increase", None)
        for option, value in (("--max-ece", gate_ece), ("--max-increase", increase)):
            if value is not None and not 0 <= value <= 1:
                raise InputError(f"{option} must be a number between 0 and 1, got {value}")
        if max_increase is not None and baseline_path is None:
            raise InputError("--max-increase needs --baseline OLD.json (an earlier `calibscope ece --json` output)")
        fixed_t = temperature_view.temperature_option(temperature, temperature_from)
        base = ece_view.read_baseline(Path(baseline_path)) if baseline_path is not None else None

        inputs = ModelInputs(data=data, split=split, label_column=label_column, limit=limit, arch=arch,
                             arch_kwargs=arch_kwargs, trust=trust, device=device, precision=precision,
                             batch_size=batch_size, mean=mean, std=std, no_cache=no_cache, defaults=defaults)
        headline = ece_view.HEADLINE[norm_]
        results = []
        group = distributed.current()
        for name, path in zip(display_names(checkpoints), checkpoints, strict=True):
            warnings, temperature_info = [], None
            if fixed_t is not None:
                temperature_info = fixed_t.describe()
            if bootstrap:  # resampling needs every example in one place (gathered on every rank under torchrun)
                outputs, checkpoint = inputs.outputs(path)
                meta, logits = outputs.meta, outputs.logits
                if fixed_t is not None:
                    logits = apply_temperature(logits, fixed_t.value)
                metrics = calibration_metrics(logits, outputs.labels, n_bins=n_bins, bootstrap=bootstrap, seed=seed)
            else:  # sufficient statistics chunk by chunk (and rank by rank): the logits are never all in one place
                shard, checkpoint = inputs.output_shard(path)
                meta = shard.meta
                chunks = shard.chunks() if fixed_t is None else (
                    (apply_temperature(z, fixed_t.value), y) for z, y in shard.chunks())
                metrics = streamed_calibration_metrics(
                    chunks, num_classes=shard.num_classes, n_bins=n_bins, num_examples=len(shard),
                    reduce=None if group is None else group.all_reduce_sum,
                    gather=None if group is None else group.all_gather_rows)
            if fixed_t is not None:
                warnings += fixed_t.warnings_for(meta)
            if temperature_info is not None:
                for m in metrics.metrics.values():
                    m.definition["logits"] = f"divided by the temperature T = {fixed_t.value!r} before the softmax"
            result = ece_view.EceResult(name, path, checkpoint.format, metrics.report, meta,
                                        metrics=metrics, headline=headline, temperature=temperature_info,
                                        warnings=tuple(warnings), notes=metrics.warnings)
            if base is not None:
                result = base.compare(result, n_results=len(checkpoints))
            results.append(result)

        gate = _gate(results, gate_ece, increase, base)
        doc = ece_view.document(results, gate=gate)
        for r in results:
            for w in r.warnings:
                echo_err(f"warning: {r.name}: {w}")
        written = ece_view.write_outputs(out, results, doc) if out is not None else None
        if bins_csv is not None:
            ece_view.write_bins_csv(bins_csv, results)
        if junit is not None:
            ece_view.write_junit(junit, results, gate)
        if json_:
            ece_view.print_json(doc)
        else:
            ece_view.print_tables(results, written=written, show_all=all_, gate=gate)
        if not gate.passed:
            raise GateFailed("; ".join(c.message for c in gate.checks if not c.passed))


def _gate(results, max_ece, max_increase, base):
    """Every threshold applied to every checkpoint (comparisons only; the numbers come from the library)."""
    from calibscope.render.ece_view import Gate, GateCheck

    checks = []
    for r in results:
        label = "ECE" if r.headline == "ece" else {"ece_l2": "ECE ℓ2", "mce": "MCE"}[r.headline]
        if max_ece is not None:
            ok = not r.value > max_ece
            checks.append(GateCheck(r.name, "max_ece", r.headline, r.value, max_ece, ok,
                                    f"{r.name} {label} {r.value:.4f} {'≤' if ok else '>'} --max-ece {max_ece:g}"))
        if max_increase is not None and r.baseline is not None:
            delta = r.baseline["delta"]
            ok = not delta > max_increase
            checks.append(GateCheck(
                r.name, "max_increase", r.headline, r.value, max_increase, ok,
                f"{r.name} {label} {r.value:.4f} vs baseline {r.baseline['value']:.4f}: {delta:+.4f} "
                f"{'≤' if ok else '>'} --max-increase {max_increase:g}"))
    return Gate(max_ece=max_ece, max_increase=max_increase if base is not None else None,
                baseline=None if base is None else str(base.path), checks=tuple(checks))
