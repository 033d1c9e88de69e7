"""Default settings of the diagnostics, in a module that imports nothing (no torch), so that the command
line can show them in ``--help`` and the workflows can use them without loading the math."""

from __future__ import annotations

# calibration (Guo et al. 2017 and Müller et al. 2019 use 15 equal-width bins)
DEFAULT_BINS = 15

# selective classification: coverages at which the accuracy of the kept examples is reported
DEFAULT_COVERAGES = (0.8, 0.9, 0.95)

# Hessian (Foret et al. 2021 report λ1 and λ1/λ5)
DEFAULT_TOP = 5
DEFAULT_TOL = 1e-4
DEFAULT_EXAMPLES = 4096
DEFAULT_BATCH_SIZE = 256
DEFAULT_MAX_HVP = 200
DEFAULT_TRACE_SAMPLES = 20

# documented upper bounds (calibscope.bounds says why)
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit integer
MAX_BINS = 10_000  # equal-width bins of ECE and of histograms
MAX_BOOTSTRAP = 100_000  # bootstrap replicates
