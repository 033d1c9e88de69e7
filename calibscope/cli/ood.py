"""``calibscope ood``: how well the model's confidence separates in-distribution from out-of-distribution inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from calibscope.cli._common import (
    HELP,
    HELP_LAYER,
    HELP_SCORES,
    HELP_SHRINKAGE,
    HELP_TEMPERATURE,
    HELP_TRAIN,
    MODEL_OPTIONS,
    EnsembleOpt,
    JsonOpt,
    LogOpt,
    McDropoutOpt,
    McSeedOpt,
    ValOpt,
    cli_errors,
    detector_options,
    with_options,
)
from calibscope.workflows.ood import DEFAULT_HISTOGRAM_BINS, DEFAULT_SHRINKAGE, DEFAULT_TPR


@with_options(detector_options, *MODEL_OPTIONS)
def ood(
    checkpoints: list[Path] = typer.Argument(
        ..., help="Checkpoint (.pt2, TorchScript, state_dict, safetensors) or a logits file of the "
                  "in-distribution test set; several with --ensemble.", show_default=False),
    data: Path | None = typer.Option(None, "--data", "-d", help="In-distribution test set. " + HELP["data"],
                                     show_default=False),
    ood_data: Path = typer.Option(..., "--ood-data", help="Out-of-distribution inputs: a dataset with the same "
                                  "input shape (labels ignored), or a logits file of the same model on them.",
                                  show_default=False),
    train: Path | None = typer.Option(None, "--train", help=HELP_TRAIN, show_default=False),
    val: ValOpt = None,
    score: str | None = typer.Option(None, "--score", "--detector", "-s", help=HELP_SCORES + " [default: msp,max-logit,"
                                     "energy, and mahalanobis with --train].", show_default=False),
    temperature: str = typer.Option("1", "--temperature", "-T", help=HELP_TEMPERATURE, show_default=False),
    shrinkage: str = typer.Option(DEFAULT_SHRINKAGE, "--shrinkage", help=HELP_SHRINKAGE),
    tpr: float = typer.Option(DEFAULT_TPR, "--tpr", help="TPR level of the FPR metric (FPR at 95 % TPR)."),
    bins: int = typer.Option(DEFAULT_HISTOGRAM_BINS, "--bins", help="Bins of the score histograms."),
    positive: str = typer.Option("ood", "--positive", help="Positive class of FPR@TPR and the ROC curves: ood (the "
                                 "class to detect, as pytorch-ood and torch-uncertainty) or in (in-distribution, "
                                 "Liu et al. 2020's wording). AUROC and AUPR-In/Out do not depend on it."),
    layer: str | None = typer.Option(None, "--layer", help=HELP_LAYER, show_default=False),
    json_: JsonOpt = False,
    log: LogOpt = None,
    out: Path | None = typer.Option(None, "--out", "-o", help=HELP["out"] + " ROC curves: ood_roc.png/.svg; "
                                    "score histograms: ood_scores.png/.svg; numbers: ood.json.", show_default=False),
    ensemble: EnsembleOpt = False,
    mc_dropout: McDropoutOpt = None,
    seed: McSeedOpt = 0,
    **options: Any,
) -> None:
    """Out-of-distribution detection: AUROC, AUPR-In, AUPR-Out and FPR at 95 % TPR of each confidence score.

    OOD inputs are the positives of FPR@95TPR by default (--positive in for the other convention; the output
    says which); every score is higher for inputs that look more in-distribution. Ties are handled as
    scikit-learn does. Scores: max softmax probability (Hendrycks & Gimpel 2017), max logit, energy
    T·logsumexp(z/T) (Liu et al. 2020) and, with --train, the Mahalanobis distance of the penultimate
    features to the closest class mean (Lee et al. 2018); the post-hoc detectors odin, knn, vim, react, ash,
    gradnorm and gram with --score (equal to pytorch-ood 0.4's implementations; docs/ood.md).

    Examples:

      calibscope ood model.pt2 --data test.npz --ood-data noise.npz

      calibscope ood model.pt2 --data test.npz --ood-data svhn/ --train train.npz --out figs/

      calibscope ood test_logits.npz --ood-data ood_logits.npz --score energy --json

      calibscope ood model.safetensors --data test.npz --ood-data svhn/ --train train.npz --val val.npz
      --score energy,knn,vim,gram
    """
    with cli_errors():
        from calibscope.render import trackers

        log = trackers.check_trackers(log)
        from calibscope.cli._common import check_outputs

        check_outputs(folders={"--out": out})
        from calibscope.cli._common import (
            detector_settings,
            one_model,
            parse_shrinkage,
            parse_temperature,
            project_defaults,
            session_from_options,
        )
        from calibscope.render import ood_view
        from calibscope.workflows.ood import OodSettings, run_ood

        settings = OodSettings(scores=score, temperature=parse_temperature(temperature),
                               shrinkage=parse_shrinkage(shrinkage), tpr=tpr, n_bins=bins, positive=positive,
                               detectors=detector_settings(options))
        session = session_from_options(data=data, defaults=project_defaults(), layer=layer, **options)
        name, model = one_model(checkpoints, ensemble=ensemble, mc_dropout=mc_dropout, seed=seed)
        result = run_ood(session, model, settings, ood_data=ood_data, train=train, val=val, name=name)
        doc = ood_view.document(result)
        trackers.log_run(log, name="ood", document=doc)
        written = ood_view.write_outputs(out, result, doc) if out is not None else None
        if json_:
            ood_view.print_json(doc)
        else:
            ood_view.print_tables(result, written=written)
