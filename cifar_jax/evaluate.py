"""Evaluate a model on the whole test set: loss, accuracy, the confusion matrix and the per-class
report. The training loop uses it after every epoch; the command line re-evaluates a saved run:

    python -m cifar_jax.evaluate --workdir RUN [--checkpoint EPOCH] [--json] [--out DIR]
"""

import json
import os
import sys
from typing import NamedTuple

import jax

from cifar_jax import checkpoint, compilation, data, parallel, report, run, steps, sweep
from cifar_jax.cli import OneLineParser, add_model_choice, positive
from cifar_jax.config import ConfigError
from cifar_jax.train_state import is_stacked


class TestSet(NamedTuple):
    """The test images and labels on the devices, with the batch indices that cover them once."""

    images: jax.Array
    labels: jax.Array
    idx: jax.Array  # [batches, batch]; the last batch padded with mask 0
    mask: jax.Array


def place_test_set(images, labels, eval_batch_size, mesh):
    """Put the test split on `mesh`: the images replicated, each batch split over the devices."""
    replicate, split = parallel.replicated(mesh), parallel.batch_split(mesh)
    n = mesh.shape["data"]
    eval_batch_size = -(-eval_batch_size // n) * n  # the results don't depend on it
    idx, mask = jax.device_put(jax.device_get(data.batch_indices(len(labels), eval_batch_size)),
                               split)
    return TestSet(*jax.device_put((images, labels), replicate), idx, mask)


def evaluate(state, test, tta=0):
    """({"loss", "accuracy"} over every test image, predicted classes as numpy [images]), with
    test-time augmentation `tta` (0 none, 1 mirror, 2 mirror and translations, 3 selective).
    For a stacked state of N models: ([N such dicts], predicted classes [N, images])."""
    metrics, predictions = steps.eval_batches(state, *test, tta=tta)
    real = parallel.gather_from_processes(test.mask) > 0
    predictions = parallel.gather_from_processes(predictions)
    if is_stacked(state):
        return steps.summarise_models(metrics, len(predictions)), predictions[:, real]
    return steps.summarise(metrics), predictions[real]


def ensemble(state, test, tta=0):
    """`evaluate` for the ensemble of a stacked state's models (the mean of their softmaxes)."""
    metrics, predictions = steps.ensemble_batches(state, *test, tta=tta)
    real = parallel.gather_from_processes(test.mask) > 0
    return steps.summarise(metrics), parallel.gather_from_processes(predictions)[real]


def predicted(state, test, tta=0):
    """The predicted test classes of a model, or of a stacked state's models' ensemble (a
    stack of one: its model's), with test-time augmentation `tta`."""
    if is_stacked(state) and state.step.shape[0] > 1:
        return ensemble(state, test, tta)[1]
    if is_stacked(state):
        return evaluate(state, test, tta)[1][0]
    return evaluate(state, test, tta)[1]


def final_predictions(state, test, config, final):
    """The predicted test classes the reports show: the model's; N models' ensemble; a sweep's
    best point's (`final`: the last metrics row). With the recipe's test-time augmentation."""
    if config.sweep:
        part = sweep.parts(config)[sweep.best(final)][1]
        state = jax.tree.map(lambda x: x[part], state)
    return predicted(state, test, config.tta)


def parse_args(argv=None):
    p = OneLineParser(prog="python -m cifar_jax.evaluate",
                      description="Evaluate a trained run's checkpoint on the whole CIFAR-10 test "
                                  "set: test loss and accuracy, as the run's metrics.jsonl has them.")
    p.add_argument("--workdir", required=True, help="the run folder written by cifar_jax.train")
    p.add_argument("--checkpoint", type=positive(int), metavar="EPOCH",
                   help="evaluate the checkpoint of this epoch (default: the newest)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: epoch, test_loss, test_accuracy (and "
                        "test_loss_tta, test_accuracy_tta for a recipe with test-time "
                        "augmentation)")
    p.add_argument("--out", metavar="DIR",
                   help="also write confusion_matrix.png and report.txt (per-class precision, "
                        "recall, F1) into DIR")
    add_model_choice(p, "evaluate")
    p.add_argument("--data-dir", help="TFDS data dir holding a prepared cifar10 (default: the run's)")
    p.add_argument("--no-download", dest="download", action="store_const", const=False,
                   help="fail at once, rather than download, when the data dir lacks cifar10")
    return p.parse_args(argv)


def check_out_dir(out):
    """`out` can take the reports without overwriting anything."""
    taken = [name for name in report.REPORT_FILES if os.path.exists(os.path.join(out, name))]
    if taken:
        raise ConfigError(f"{out} already holds {taken[0]}: choose another --out, nothing was written")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} is a file: choose a folder, nothing was written")


def main(argv=None):
    args = parse_args(argv)
    checkpoint.quiet()
    compilation.enable()
    try:
        if args.out:
            check_out_dir(args.out)
        config, state, epoch = run.load_state(args.workdir, args.checkpoint, args.member,
                                              dict(args.point or ()))
        splits = data.load_cifar10(args.data_dir or config.data_dir,
                                   config.download if args.download is None else args.download)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (run.RunError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    mesh = parallel.data_mesh()
    state = jax.device_put(state, parallel.replicated(mesh))
    test = place_test_set(*splits["test"], config.eval_batch_size, mesh)
    score = ensemble if is_stacked(state) else evaluate  # N models: their ensemble
    summary, predicted = score(state, test)
    point = run.chosen_point(args.workdir, dict(args.point or ()))[1]  # load_state's
    result = {"epoch": epoch, **({"point": point} if point else {}),
              "test_loss": summary["loss"], "test_accuracy": summary["accuracy"]}
    if config.tta:  # the recipe's test-time augmentation: its predictions go in the reports
        tta, predicted = score(state, test, config.tta)
        result.update(test_loss_tta=tta["loss"], test_accuracy_tta=tta["accuracy"])
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        report.write_reports(args.out, splits["test"][1], predicted)
    if args.json:
        print(json.dumps(result))
    else:
        which = (f"the ensemble of {config.num_seeds} models, " if is_stacked(state) else
                 f"model {args.member} (seed {config.seed + args.member}), "
                 if args.member is not None and config.num_seeds > 1 else "")
        if point:
            which = (f"point {sweep.label(point)}"
                     + ("" if args.point else " (the best)") + (f", {which}" if which else ", "))
        print(f"{which}epoch {epoch}: test loss {summary['loss']:.4f} accuracy {summary['accuracy']:.4f} "
              f"({len(predicted):,} images)"
              + (f", with TTA {result['test_accuracy_tta']:.4f}" if config.tta else "")
              + (f"; reports in {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
