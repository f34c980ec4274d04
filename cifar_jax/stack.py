"""A run's models: N >= 1 of them, trained as one stacked train state. A single run is a stack of
one; `--num-seeds` and a sweep's points make more. Here: their names and keys, each epoch's
batches, and the run's metrics row made of theirs (means, stds, the 95% confidence interval).

The state itself is `train_state.from_config` with N keys; `steps.train_batches_stacked(N)` trains
it in one compiled program.
"""

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cifar_jax import data, evaluate, steps, sweep


class Stack(NamedTuple):
    """The models of a run (of a program of a sweep of several: `full` names its points as the
    whole sweep does).

    labels: each model's name in messages ("seed 3"; a sweep's "learning_rate=0.1, seed 3";
    "" for a run of one model). swept: the models are a sweep's points, whose rows the run's
    row groups by point, and a model whose loss diverges is dropped (its point's values may
    well be too large) where elsewhere it stops the run. alone: one model, no sweep: its
    checkpoints hold the model itself, the layout such runs have always had.
    """

    labels: tuple
    seeds: tuple
    swept: bool
    alone: bool
    full: Callable = lambda point: point

    @classmethod
    def of(cls, config, full=None):
        swept = bool(config.sweep) or full is not None
        full = full or (lambda point: point)
        if swept:
            labels = [f"{sweep.label(full(point))}, seed {config.seed + i}"
                      for point in config.points() for i in range(config.num_seeds)]
        elif config.members > 1:
            labels = [f"seed {seed}" for seed in config.member_seeds()]
        else:
            labels = [""]
        return cls(tuple(labels), tuple(config.member_seeds()), swept,
                   config.members == 1 and not config.sweep, full)

    def keys(self):
        """(init, data, step) PRNG keys, each stacked [N]: every model's `seed_keys`."""
        return tuple(jnp.stack(keys) for keys in zip(*map(seed_keys, self.seeds)))


def seed_keys(seed):
    """(init, data, step) PRNG keys: the initial weights, each epoch's data order, and each
    step's randomness (dropout, augmentation) all come from the seed alone, so a resumed run
    needs nothing from the interrupted one but its train state."""
    root = jax.random.key(seed)
    init_key, data_key = jax.random.split(root)
    return init_key, data_key, jax.random.fold_in(root, 2)


def epoch_batches(n_train, batch_size, data_key, epoch):
    """This epoch's batch indices and mask: each model's [N, steps, batch], drawn from its data
    key [N] as its own run would draw them."""
    def draw(key):
        return data.batch_indices(n_train, batch_size, jax.random.fold_in(key, epoch))

    return jax.vmap(draw)(data_key)


def epoch_row(stack, config, state, test, train_metrics, epoch, seconds, final_tta=None):
    """(the epoch's metrics.jsonl row, the predicted test classes for the reports).

    `final_tta`: not None for the final epoch, which adds test-time augmentation's figures
    (when the recipe has it) and, for N models, their ensemble's and the 95% confidence
    interval of the test accuracy. One model's row holds its figures; N models' the means,
    `_std`s and `per_seed`; a sweep's one such entry per point under "points", and its reports
    show the best point's predictions.
    """
    train = steps.summarise_models(train_metrics, len(stack.labels))
    tests, predicted = evaluate.evaluate(state, test)
    rows = [{"train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
             "test_loss": te["loss"], "test_accuracy": te["accuracy"]}
            for tr, te in zip(train, tests)]
    if final_tta:  # its predictions go in the reports
        tta, predicted = evaluate.evaluate(state, test, final_tta)
        for r, t in zip(rows, tta):
            r.update(test_loss_tta=t["loss"], test_accuracy_tta=t["accuracy"])
    parts = sweep.parts(config) if config.sweep else [({}, slice(None))]
    entries = [_combined(state, part, test, rows[part], predicted[part], final_tta)
               for _, part in parts]
    if not config.sweep:
        (entry, predicted), = entries
        return {"epoch": epoch, **entry, "seconds": round(seconds, 3)}, predicted
    row = {"epoch": epoch, "points": [{"point": point, **entry}
                                       for (point, _), (entry, _) in zip(parts, entries)],
           "seconds": round(seconds, 3)}
    return row, entries[sweep.best(row)][1]


def _combined(state, part, test, rows, predicted, final_tta):
    """(one row of models' rows, the predicted classes): a lone model's own; for N models (those
    of `part` of the state) the mean, std and per_seed values, and in the final epoch their
    ensemble and 95% interval."""
    if len(rows) == 1:
        return rows[0], predicted[0]
    combined = combine(rows)
    row = {k: v for k, v in combined.items() if k != "per_seed"}
    if final_tta is not None:
        if part != slice(None):
            state = jax.tree.map(lambda leaf: leaf[part], state)
        ensemble, predicted = evaluate.ensemble(state, test, final_tta)
        key = "test_accuracy_tta" if final_tta else "test_accuracy"
        row.update(ensemble_test_loss=ensemble["loss"], ensemble_test_accuracy=ensemble["accuracy"],
                   test_accuracy_ci95=list(confidence_interval(combined["per_seed"][key])))
    return {**row, "per_seed": combined["per_seed"]}, predicted


def entries(row):
    """A metrics row's entries, each {"point": {setting: value}, figures...}: a sweep's points,
    or the run's one row as the entry of no point."""
    return row["points"] if "points" in row else [{"point": {}, **row}]


def confidence_interval(values, level=0.95, within=(0.0, 1.0)):
    """(low, high): Student's t interval for the mean of `values` (N >= 2 independent runs),
    cut to the range `within` the values can take (an accuracy's: two seeds' t interval is
    wide, and "-0.19 to 0.68" would say nothing more than "0 to 0.68")."""
    # t's quantile function itself (what scipy.stats.t.ppf calls): scipy.stats takes most of a
    # second to import, scipy.special a tenth of that
    from scipy.special import stdtrit

    n, mean = len(values), float(np.mean(values))
    half = stdtrit(n - 1, 0.5 + level / 2) * _std(values) / math.sqrt(n)
    low, high = np.clip((mean - half, mean + half), *within)  # NaN stays NaN
    return float(low), float(high)


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


def figures(row):
    """An entry's figures for its line: 'train loss 1.2 acc 0.56  test loss ...', the means ±
    stds of N models, and in the final epoch the TTA and ensemble accuracies."""
    shown = functools.partial(describe, row)
    return ((f"train loss {shown('train_loss')} acc {shown('train_accuracy')}  "
            f"test loss {shown('test_loss')} acc {shown('test_accuracy')}"),
            (f"  test acc with TTA {shown('test_accuracy_tta')}" if "test_accuracy_tta" in row
             else "")
            + (f"  ensemble {row['ensemble_test_accuracy']:.4f}"
               if "ensemble_test_accuracy" in row else ""))
