"""Train a CIFAR-10 classifier: `train_and_evaluate(config, workdir)` and its command line.

    python -m cifar_jax.train --model cnn        # the tutorial's CNN, Adam, 10 epochs
    python -m cifar_jax.train --model mlp        # the tutorial's MLP, SGD, 5 epochs
"""

import json
import os
import sys
import time

import jax
import numpy as np
from tqdm import tqdm

from cifar_jax import checkpoint, data, report, steps
from cifar_jax.cli import OneLineParser, positive
from cifar_jax.config import MODEL_DEFAULTS, Config, ConfigError
from cifar_jax.models import MODELS

PROGRESS_UPDATES = 20  # compiled calls per epoch: the progress bar moves this many times


def describe_devices():
    """'cpu, 1 device' / 'gpu, 8 devices': the backend and how many devices train."""
    n = jax.device_count()
    return f"{jax.default_backend()}, {n} device{'s' if n != 1 else ''}"


def prepare_workdir(workdir):
    """Create `workdir`, refusing one that already holds files, so no result is overwritten."""
    if os.path.isdir(workdir) and os.listdir(workdir):
        raise ConfigError(f"workdir {workdir} is not empty: choose a new --workdir "
                          "(nothing in it was changed)")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create workdir {workdir}: {e.strerror}") from None
    if not os.access(workdir, os.W_OK):
        raise ConfigError(f"workdir {workdir} is not writable: choose another --workdir")


def train_and_evaluate(config: Config, workdir: str, progress: bool = True):
    """Train `config.model` on CIFAR-10, evaluate after every epoch, write the run to `workdir`.

    Writes config.json, metrics.jsonl (one row per epoch), Orbax checkpoints, and for the final
    model confusion_matrix.png, report.txt and history.png. Returns the per-epoch rows.
    """
    prepare_workdir(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json() + "\n")

    splits = data.load_cifar10(config.data_dir, config.download)
    train_images, train_labels = jax.device_put(splits["train"])
    test_images, test_labels = jax.device_put(splits["test"])
    n_train = len(train_labels)

    init_rng, data_rng = jax.random.split(jax.random.key(config.seed))
    model = MODELS[config.model]()
    state = steps.create_train_state(model, config.optimizer, config.learning_rate, init_rng)
    test_idx, test_mask = data.batch_indices(len(test_labels), config.eval_batch_size)
    n_steps = data.num_batches(n_train, config.batch_size)
    per_call = -(-n_steps // PROGRESS_UPDATES)

    ckpt = checkpoint.manager(workdir, config.keep)
    history = []
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        idx, mask = data.batch_indices(n_train, config.batch_size,
                                       jax.random.fold_in(data_rng, epoch))
        train_metrics = []
        with tqdm(total=n_steps, desc=f"epoch {epoch}/{config.epochs}", unit="step",
                  disable=not progress, leave=False) as bar:
            for first in range(0, n_steps, per_call):
                state, metrics = steps.train_batches(
                    state, train_images, train_labels,
                    idx[first:first + per_call], mask[first:first + per_call])
                train_metrics.append(jax.block_until_ready(metrics))
                bar.update(len(metrics["count"]))
        seconds = time.perf_counter() - start
        train = steps.summarise(train_metrics)
        test_metrics, predictions = steps.eval_batches(state, test_images, test_labels,
                                                       test_idx, test_mask)
        test = steps.summarise(test_metrics)
        row = {"epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
               "test_loss": test["loss"], "test_accuracy": test["accuracy"],
               "seconds": round(seconds, 3)}
        history.append(row)
        with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        checkpoint.save(ckpt, epoch, state)
        print(f"epoch {epoch}/{config.epochs}  train loss {row['train_loss']:.4f} "
              f"acc {row['train_accuracy']:.4f}  test loss {row['test_loss']:.4f} "
              f"acc {row['test_accuracy']:.4f}  {seconds:.1f}s ({n_train / seconds:,.0f} img/s)",
              flush=True)
    ckpt.wait_until_finished()

    predicted = np.asarray(predictions)[np.asarray(test_mask) > 0]
    counts = report.confusion_matrix(splits["test"][1], predicted, len(data.CLASS_NAMES))
    report.plot_confusion_matrix(counts, data.CLASS_NAMES, os.path.join(workdir, "confusion_matrix.png"))
    with open(os.path.join(workdir, "report.txt"), "w") as f:
        f.write(report.classification_report(counts, data.CLASS_NAMES))
    report.plot_history(history, os.path.join(workdir, "history.png"))
    return history


def parse_args(argv=None):
    p = OneLineParser(
        prog="python -m cifar_jax.train",
        description="Train the Keras tutorial's MLP or CNN on CIFAR-10 with JAX, evaluate it on the "
                    "test set after every epoch, and write metrics, plots and checkpoints to --workdir.")
    p.add_argument("--model", choices=sorted(MODEL_DEFAULTS), default="cnn",
                   help="which network: 'mlp' (Dense 3000-1000-10, SGD, 5 epochs) or "
                        "'cnn' (two conv blocks, Adam, 10 epochs) (default: cnn)")
    p.add_argument("--optimizer", choices=sorted(steps.OPTIMIZERS),
                   help="optax optimiser (default: sgd for mlp, adam for cnn)")
    p.add_argument("--learning-rate", type=positive(float),
                   help="learning rate (default: 0.01 for sgd, 0.001 for adam)")
    p.add_argument("--epochs", type=positive(int), help="passes over the 50,000 training images "
                                                        "(default: 5 for mlp, 10 for cnn)")
    p.add_argument("--batch-size", type=positive(int), default=32,
                   help="training batch size; the last partial batch is trained on too (default: 32)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the initial weights and the shuffling: same seed, same run (default: 0)")
    p.add_argument("--data-dir", help="TFDS data dir holding a prepared cifar10; CIFAR-10 is "
                                      "downloaded there if missing (default: $TFDS_DATA_DIR, else "
                                      "~/tensorflow_datasets)")
    p.add_argument("--no-download", dest="download", action="store_false",
                   help="fail at once, rather than download, when the data dir lacks cifar10")
    p.add_argument("--workdir", help="where the run's files go; must be new or empty "
                                     "(default: runs/MODEL-DATE-TIME)")
    p.add_argument("--keep", type=positive(int), default=3,
                   help="how many epoch checkpoints to keep (default: 3)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar, only one line per epoch")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    workdir = args.workdir or os.path.join("runs", f"{args.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        config = Config.for_model(args.model, optimizer=args.optimizer, learning_rate=args.learning_rate,
                                  epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                                  data_dir=args.data_dir, download=args.download, keep=args.keep)
        print(describe_devices(), flush=True)
        print(f"training {config.model} ({config.optimizer}, lr {config.learning_rate}, "
              f"{config.epochs} epochs, batch {config.batch_size}) -> {workdir}", flush=True)
        history = train_and_evaluate(config, workdir, progress=args.progress)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except data.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: the finished epochs are in {workdir}", file=sys.stderr)
        return 130
    final = history[-1]
    print(f"done: test accuracy {final['test_accuracy']:.4f}; files in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
