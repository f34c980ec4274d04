"""Many seeds in one run (`--num-seeds N`): each model's metrics, and the mean, std and 95%
confidence interval over them that a multi-seed run reports.

The models themselves are one stacked train state (`state.from_config` with N keys) that
`steps.train_batches_stacked()` trains in one compiled program.
"""

import math

import numpy as np


def confidence_interval(values, level=0.95):
    """(low, high): Student's t interval for the mean of `values` (N >= 2 independent runs)."""
    # t's quantile function itself (what scipy.stats.t.ppf calls): scipy.stats takes most of a
    # second to import, scipy.special a tenth of that
    from scipy.special import stdtrit

    n, mean = len(values), float(np.mean(values))
    half = stdtrit(n - 1, 0.5 + level / 2) * _std(values) / math.sqrt(n)
    return mean - half, mean + half


def _std(values):
    """The sample std (ddof 1); NaN where a value is (a diverged model's), not an error."""
    return float(np.std(np.asarray(values, np.float64), ddof=1))


def combine(rows):
    """One metrics row from each model's row (same keys): each key's mean over the models, its
    `_std` (sample std, ddof 1), and `per_seed`, every model's value."""
    keys = list(rows[0])
    combined = {key: float(np.mean([row[key] for row in rows])) for key in keys}
    combined.update({f"{key}_std": _std([row[key] for row in rows]) for key in keys})
    combined["per_seed"] = {key: [row[key] for row in rows] for key in keys}
    return combined


def describe(row, key):
    """'0.6814 ± 0.0050' for a combined row, '0.6814' for a one-model row."""
    return (f"{row[key]:.4f} ± {row[key + '_std']:.4f}" if f"{key}_std" in row
            else f"{row[key]:.4f}")
