"""The CORP, calibrate and distill sentences follow the numbers: results with the opposite ordering flip the
text (who is lowest / highest, which teacher carries more, whether a lead survives the paired bootstrap)."""

from __future__ import annotations

from types import SimpleNamespace as NS

from calibscope.render.findings_calibration import calibrate_findings, corp_findings, distill_findings


def _corp(name, mcb, dsc, outside=0, resamples=200):
    decomposition = NS(miscalibration=mcb, discrimination=dsc, score=0.1, uncertainty=0.1)
    return NS(name=name, corp=NS(brier=decomposition, log=decomposition, band_resamples=resamples, band_level=0.9,
                                 outside_band=outside, n=1000))


def test_corp_sentences_flip_with_the_numbers():
    a = corp_findings([_corp("A", 0.01, 0.02, outside=0), _corp("B", 0.05, 0.03, outside=400)])
    assert "A: the CORP curve leaves the 90 % consistency band at 0 of 1,000 examples (0.0 %); no miscalibration" \
        in a[0]
    assert "B: the CORP curve leaves the 90 % consistency band at 400 of 1,000 examples (40.0 %); the " \
           "miscalibration there is more than chance" in a[1]
    assert a[2] == ("Brier MCB is lowest for A (0.0100) and highest for B (0.0500); B discriminates best (DSC "
                    "0.0300) and A least (0.0200).")
    b = corp_findings([_corp("A", 0.05, 0.02), _corp("B", 0.01, 0.03)])
    assert b[-1].startswith("Brier MCB is lowest for B (0.0100) and highest for A (0.0500)")
    assert corp_findings([_corp("A", 0.01, 0.02, resamples=0)]) == []  # one model, no band: nothing to say


def _calibrate(name, uncalibrated, best_value, runner_value, low, high):
    def score(method, value):
        return NS(method=method, metrics=NS(value=lambda key, v=value: v))

    scores = [score("uncalibrated", uncalibrated), score("temperature", best_value), score("vector", runner_value)]
    comparison = NS(criterion="nll", best="temperature", runner_up="vector",
                    margin=(runner_value - best_value, low, high), scores=scores,
                    score=lambda m: next(s for s in scores if s.method == m))
    return NS(name=name, comparison=comparison)


def test_calibrate_sentences_flip_with_the_numbers():
    lines = calibrate_findings([_calibrate("A", 0.30, 0.20, 0.25, 0.01, 0.09),
                                _calibrate("B", 0.40, 0.21, 0.22, -0.02, 0.04)])
    assert "A: best by NLL: temperature (0.2000), ahead of vector by 0.0500" in lines[0]
    assert "the lead holds under resampling" in lines[0] and "NLL 0.3000 uncalibrated → 0.2000" in lines[0]
    assert "within resampling noise" in lines[1]
    assert lines[2] == "Calibration lowers the NLL most for B (by 0.1900) and least for A (by 0.1000)."
    flipped = calibrate_findings([_calibrate("A", 0.45, 0.20, 0.25, -0.01, 0.09),
                                  _calibrate("B", 0.25, 0.21, 0.22, 0.001, 0.04)])
    assert "within resampling noise" in flipped[0] and "the lead holds" in flipped[1]
    assert flipped[2] == "Calibration lowers the NLL most for A (by 0.2500) and least for B (by 0.0400)."


def _teacher(infos, entropies):
    return NS(profiles=tuple(NS(temperature=t, non_target_information=i, non_target_entropy_normalised=e)
                             for t, i, e in zip((1.0, 4.0), infos, entropies, strict=True)))


def test_distill_sentences_flip_with_the_numbers():
    student = NS(agreement=0.97, kl_at_1=0.25, temperature=4.0, distillation_loss=12.9)
    result = NS(teachers={"hard": _teacher((1.6, 0.9), (0.26, 0.6)), "ls": _teacher((0.1, 0.05), (0.95, 0.98))},
                students=(("hard", "ls", student),))
    lines = distill_findings(result)
    assert lines[0].startswith("hard's soft targets carry the most non-target information at every T (1, 4) and "
                               "ls's the least — at T = 1: 1.600 vs 0.100 nats")
    assert lines[1] == ("ls agrees with hard on 97.00 % of the top-1 predictions (KL at T = 1: 0.2500 nats; T²·KL "
                        "at T = 4: 12.9000).")
    swapped = NS(teachers={"hard": _teacher((0.1, 0.05), (0.95, 0.98)), "ls": _teacher((1.6, 0.9), (0.26, 0.6))},
                 students=())
    assert distill_findings(swapped)[0].startswith("ls's soft targets carry the most non-target information at "
                                                   "every T (1, 4) and hard's the least")
    crossing = NS(teachers={"a": _teacher((1.6, 0.05), (0.2, 0.9)), "b": _teacher((0.1, 0.9), (0.9, 0.2))},
                  students=())
    assert distill_findings(crossing) == ["Which model's soft targets carry the most non-target information "
                                          "changes with T (T = 1: a most, b least; T = 4: b most, a least)."]
