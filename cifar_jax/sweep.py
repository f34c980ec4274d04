"""Sweeps (`--sweep NAME=V1,V2,...`): a run's members grouped into points, the points' rows,
the table `sweep.csv`, the best point, and picking a point for evaluate and predict.

The members are one stacked train state (`state.from_config`, a `SweptState`) that the steps
train as `--num-seeds` does: point by point in grid order (`Config.points`), each point's seeds
together, so member m is point m // num_seeds with seed --seed + m % num_seeds.
"""

import csv
import math
import os

from cifar_jax.config import ConfigError

CSV_FILE, PLOT_FILE = "sweep.csv", "sweep.png"


def label(point):
    """'learning_rate=0.001' ('a=1,b=2' for a grid point): how lines, folders and messages
    name a point."""
    return ",".join(f"{name}={value:g}" for name, value in point.items())


def parts(config):
    """(point, slice of the members that train it) for each point, in grid order."""
    n = config.num_seeds
    return [(point, slice(i * n, (i + 1) * n)) for i, point in enumerate(config.points())]


def score_key(row):
    """The test accuracy a point is judged by: with TTA where the recipe has it."""
    return "test_accuracy_tta" if "test_accuracy_tta" in row else "test_accuracy"


def ranked(final):
    """The final row's points, best first (by mean test accuracy; a diverged point, NaN, last)."""
    def score(entry):
        value = entry[score_key(entry)]
        return -math.inf if math.isnan(value) else value

    return sorted(final["points"], key=score, reverse=True)


def best(final):
    """The grid index of the final row's best point."""
    return final["points"].index(ranked(final)[0])


def interval(entry):
    """(low, high) of a point's 95% interval, or None with one seed."""
    return tuple(entry["test_accuracy_ci95"]) if "test_accuracy_ci95" in entry else None


def verdict(final):
    """The line naming the best point of a finished sweep, and whether the runner-up's
    interval overlaps its own."""
    order = ranked(final)
    best, key = order[0], score_key(order[0])
    seeds = len(best.get("per_seed", {}).get(key, [0]))
    what = f"test accuracy{' with TTA' if key.endswith('tta') else ''}"
    spread = (f" ± {best[key + '_std']:.4f} (95% CI {interval(best)[0]:.4f} to "
              f"{interval(best)[1]:.4f}, {seeds} seeds)" if interval(best) else "")
    line = f"best point {label(best['point'])}: {what} {best[key]:.4f}{spread}"
    if len(order) < 2:
        return line
    second = order[1]
    if not interval(best):
        return (f"{line}; the runner-up {label(second['point'])} has {second[key]:.4f}: one seed "
                "per point gives no intervals to tell them apart (use --num-seeds 2 or more)")
    overlap = interval(second)[1] >= interval(best)[0]
    return (f"{line}; the runner-up {label(second['point'])} has {second[key]:.4f} (95% CI "
            f"{interval(second)[0]:.4f} to {interval(second)[1]:.4f}): "
            + ("the intervals overlap, so the two are not distinguishable" if overlap else
               "the intervals do not overlap: the best point is distinguishable from it"))


def write_csv(workdir, config, final):
    """sweep.csv: one row per point in grid order, the swept settings, then the test accuracy
    (mean over the seeds; with TTA where the recipe has it), its std, 95% interval and seeds."""
    names = [name for name, _ in config.sweep]
    with open(os.path.join(workdir, CSV_FILE), "w", newline="") as f:
        out = csv.writer(f)
        out.writerow([*names, "test_accuracy", "test_accuracy_std", "ci95_low", "ci95_high",
                      "seeds"])
        for entry in final["points"]:
            key = score_key(entry)
            low, high = interval(entry) or ("", "")
            out.writerow([*(entry["point"][name] for name in names), entry[key],
                          entry.get(key + "_std", ""), low, high, config.num_seeds])


def select(config, given, final=None):
    """The index of the point `given` ({setting: value}, from --point) names; without it, the
    best point of the `final` metrics row. ConfigError says what is wrong, naming the points."""
    points = config.points()
    if not config.sweep:
        if given:
            raise ConfigError("--point is for a sweep's runs (--sweep); this run trained no sweep")
        return 0
    there = "; ".join(label(point) for point in points)
    if not given:
        if final is None:
            raise ConfigError(f"the sweep has no finished epoch to find its best point from: name "
                              f"one with --point (its points: {there})")
        return best(final)
    unknown = sorted(set(given) - set(points[0]))
    if unknown:
        raise ConfigError(f"--point {unknown[0]}: the sweep does not vary it; its points: {there}")
    matches = [i for i, point in enumerate(points)
               if all(math.isclose(point[name], value, rel_tol=1e-9) for name, value in given.items())]
    if not matches:
        raise ConfigError(f"--point {label(given)} is not in the sweep; its points: {there}")
    if len(matches) > 1:
        raise ConfigError(f"--point {label(given)} matches {len(matches)} points: name the other "
                          f"swept settings too; its points: {there}")
    return matches[0]
