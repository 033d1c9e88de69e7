"""Default settings of the diagnostics, in a module that imports nothing (no torch), so that the command
line can show them in ``--help`` and the workflows can use them without loading the math."""

from __future__ import annotations

# calibration (Guo et al. 2017 and Müller et al. 2019 use 15 equal-width bins)
DEFAULT_BINS = 15

# CORP reliability (Dimitriadis, Gneiting & Jordan 2021 draw 90 % consistency bands)
DEFAULT_BAND_RESAMPLES = 200
DEFAULT_BAND_LEVEL = 0.90

# selective classification: coverages at which the accuracy of the kept examples is reported
DEFAULT_COVERAGES = (0.8, 0.9, 0.95)

# Hessian (Foret et al. 2021 report λ1 and λ1/λ5)
DEFAULT_TOP = 5
DEFAULT_TOL = 1e-4
DEFAULT_EXAMPLES = 4096
DEFAULT_BATCH_SIZE = 256
DEFAULT_MAX_HVP = 200
DEFAULT_TRACE_SAMPLES = 20

# loss-surface slices (Li et al. 2018 plot α, β ∈ [−1, 1])
DEFAULT_SPAN = 1.0
DEFAULT_SURFACE_POINTS = 21  # per axis (2-D: 21 × 21 loss evaluations)
DEFAULT_LINE_POINTS = 21  # t ∈ [0, 1] in steps of 0.05

# documented upper bounds (calibscope.bounds says why)
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit integer
MAX_BINS = 10_000  # equal-width bins of ECE and of histograms
MAX_BOOTSTRAP = 100_000  # bootstrap replicates

# post-hoc OOD detectors (diagnostics/ood_detectors.py, diagnostics/gram.py; the papers' defaults)
DEFAULT_KNN_K = 50  # Sun et al. 2022, CIFAR-10
DEFAULT_REACT_PERCENTILE = 0.9  # Sun et al. 2021: clip at the 90th percentile of training activations
DEFAULT_ASH_PERCENTILE = 0.65  # pytorch-ood's default (Djurisic et al. 2023 sweep 0.6–0.9)
DEFAULT_ASH_VARIANT = "ash-s"
DEFAULT_ODIN_TEMPERATURE = 1000.0  # Liang et al. 2018
DEFAULT_ODIN_EPSILON = 0.0014  # Liang et al. 2018 (CIFAR)
DEFAULT_GRADNORM_TEMPERATURE = 1.0  # Huang et al. 2021
DEFAULT_GRAM_POLES = 10  # Sastry & Oore 2020: orders p = 1..10
DEFAULT_GRAM_VAL_FRACTION = 0.1  # held out of the fit data per class to normalise, without --val (pytorch-ood)
DEFAULT_HUTCHPP_HVP = 30  # Hutch++ budget m (10 sketch, 10 projection, 10 residual products)
