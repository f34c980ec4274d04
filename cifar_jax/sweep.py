"""Sweeps (`--sweep NAME=V1,V2,...`): a run's points grouped into compiled programs, each
point's rows, the table `sweep.csv`, the best point, and picking a point for evaluate and
predict.

A sweep may vary any setting. Those the pieces compute with as numbers (the learning rate, an
optimiser's b2, a loss's smoothing: `contracts.untraceable` says which cannot) are *data*:
their points train as one stacked train state (`state.from_config`, a `SweptState`), point by
point in grid order, each point's seeds together, so member m is point m // num_seeds with seed
--seed + m % num_seeds. Every other setting (a model, a width, the batch size, the epochs) is
*static*: each combination of its values is a program of its own (`programs`), trained after
the others, in `RUN/programs/K/` (`PROGRAMS_DIR`), each a run folder of its own whose points the
sweep's rows, table and TensorBoard runs name in full.
"""

import csv
import itertools
import math
import os

from cifar_jax.config import FIELDS, ConfigError
from cifar_jax.registry import show

CSV_FILE, PLOT_FILE = "sweep.csv", "sweep.png"
PROGRAMS_DIR = "programs"  # RUN/programs/K: the K-th program of a sweep of several


def text(value):
    """A swept value as labels write it: 0.001, 64, cnn; (32,64) for one that holds commas."""
    shown = show(value)
    return f"({shown})" if "," in shown or isinstance(value, tuple) else shown


def label(point):
    """'learning_rate=0.001' ('a=1,b=2' for a grid point): how lines, folders and messages
    name a point."""
    return ",".join(f"{name}={text(value)}" for name, value in point.items())


def may_be_data(config, name):
    """Whether the swept setting `name` might train as data in one program: the learning rate,
    or a number of an optimiser, loss or augmentation whose type is not an integer (the pieces
    then say whether they take it traced: `contracts.untraceable`)."""
    values = dict(config.sweep)[name]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return False
    if name == "learning_rate":
        return True
    if name in FIELDS or name.startswith("model."):
        return False
    return config.setting(name).type in (float, None)


def programs(config, data):
    """[(static point, the program's config)] of a sweep, one per combination of the values of
    its swept settings that are not in `data`, in grid order; each program's config sweeps
    the `data` settings alone (its points x seeds one compiled program). [({}, config)] where
    every swept setting is data."""
    static = [(name, values) for name, values in config.sweep if name not in data]
    if not static:
        return [({}, config)]
    names = [name for name, _ in static]
    points = [dict(zip(names, values)) for values in itertools.product(*(v for _, v in static))]
    return [(point, config.at(point)) for point in points]


def describe_plan(config, plan):
    """The line that says how a sweep trains: 'sweep: 9 points x 2 seeds = 18 models in 3
    programs of 6 (a program per model.features; learning_rate within each)'."""
    points, seeds = len(config.points()), config.num_seeds
    models = config.members
    line = (f"sweep: {points} point{'s' if points != 1 else ''} x {seeds} seed"
            f"{'s' if seeds != 1 else ''} = {models} model{'s' if models != 1 else ''}")
    if len(plan) == 1:
        return f"{line} in one compiled program"
    static = [name for name in plan[0][0]]
    data = [name for name, _ in plan[0][1].sweep]
    per = plan[0][1].members
    return (f"{line} in {len(plan)} compiled programs of {per} (a program per "
            f"{' x '.join(static)}" + (f"; {', '.join(data)} within each)" if data else ")"))


def program_dir(workdir, k):
    """The folder of the sweep's program number `k` (0-based)."""
    return os.path.join(workdir, PROGRAMS_DIR, str(k + 1))


def full(config, static, local):
    """A program's point `local` with its `static` values, as the sweep `config` names it."""
    values = {**static, **local}
    return {name: values[name] for name, _ in config.sweep}


def entries(config, static, row):
    """A program's metrics row as the sweep's entries: each of its points with its full name."""
    if "points" in row:
        return [{**entry, "point": full(config, static, entry["point"])} for entry in row["points"]]
    return [{"point": full(config, static, {}),
             **{k: v for k, v in row.items() if k not in ("epoch", "seconds")}}]


def named(config, rows):
    """`rows` (a sweep's metrics) with each point naming its settings as `config` does: rows
    written before the pieces had their own settings say 'momentum' where the config says
    'optimizer.momentum' (the values are in the same order)."""
    names = [name for name, _ in config.sweep]
    for row in rows:
        for entry in row.get("points", ()):
            entry["point"] = dict(zip(names, entry["point"].values()))
    return rows


def merged(config, histories):
    """The sweep's metrics rows from its programs' (`histories`: [(static point, rows)]): one row
    per epoch, the entries of every point that reached it in grid order, the seconds summed."""
    order = [label(point) for point in config.points()]
    rows = {}
    for static, history in histories:
        for row in history:
            merged_row = rows.setdefault(row["epoch"], {"epoch": row["epoch"], "points": [],
                                                        "seconds": 0.0})
            merged_row["points"] += entries(config, static, row)
            merged_row["seconds"] = round(merged_row["seconds"] + row["seconds"], 3)
    for row in rows.values():
        row["points"].sort(key=lambda entry: order.index(label(entry["point"])))
    return [rows[epoch] for epoch in sorted(rows)]


def final(history):
    """{"points": each point's last entry, in grid order}: what the sweep is judged by (its
    programs may train different numbers of epochs)."""
    last = {}
    for row in history:
        for entry in row["points"]:
            last[label(entry["point"])] = entry
    return {"points": list(last.values())}


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
            out.writerow([*(show(entry["point"][name]) for name in names), entry[key],
                          entry.get(key + "_std", ""), low, high, config.num_seeds])


def select(config, given, final=None):
    """The index of the point `given` ({setting: value}, from --point: text is typed as the
    sweep's values) names; without it, the best point of the `final` entries. ConfigError says
    what is wrong, naming the points."""
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
    typed = {}
    for name, value in given.items():
        try:
            name, value = config.typed(name, value)
        except ConfigError as e:
            raise ConfigError(f"{e}; its points: {there}") from None
        typed[name] = value
    matches = [i for i, point in enumerate(points)
               if all(same(point[name], value) for name, value in typed.items())]
    if not matches:
        raise ConfigError(f"--point {label(typed)} is not in the sweep; its points: {there}")
    if len(matches) > 1:
        raise ConfigError(f"--point {label(typed)} matches {len(matches)} points: name the other "
                          f"swept settings too; its points: {there}")
    return matches[0]


def same(a, b):
    """Whether two values of a setting are the same (floats to rounding)."""
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b
