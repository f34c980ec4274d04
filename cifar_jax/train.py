"""Train a CIFAR-10 classifier: `train_and_evaluate(config, workdir)` and its command line.

    python -m cifar_jax.train --model cnn        # the tutorial's CNN, Adam, 10 epochs
    python -m cifar_jax.train --model mlp        # the tutorial's MLP, SGD, 5 epochs
"""

import dataclasses
import json
import os
import sys
import time

import jax
import numpy as np
from tqdm import tqdm

from cifar_jax import checkpoint, data, parallel, report, steps
from cifar_jax.cli import OneLineParser, positive
from cifar_jax.config import MODEL_DEFAULTS, RUNTIME_FIELDS, Config, ConfigError
from cifar_jax.models import MODELS

PROGRESS_UPDATES = 20  # compiled calls per epoch: the progress bar moves this many times


def describe_devices():
    """'cpu, 1 device' / 'gpu, 8 devices': the backend and how many devices train."""
    n = jax.device_count()
    return f"{jax.default_backend()}, {n} device{'s' if n != 1 else ''}"


class TrainingError(RuntimeError):
    """Training cannot go on (the loss diverged); the message says where and what to do."""


def _write_json_lines(path, rows):
    """Replace `path` atomically, so a crash leaves either the old file or the new one."""
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(path + ".tmp", path)


def resumed_config(workdir):
    """The settings of the run in `workdir`, which --resume continues."""
    try:
        return Config.load(workdir)
    except ConfigError as e:
        raise ConfigError(f"nothing to resume: {e}; start the run without --resume") from None


def open_run(config, workdir, resume, write=True):
    """Create a new run folder holding config.json (if `write`), or check that `workdir` is the
    same run."""
    config_path = os.path.join(workdir, "config.json")
    if resume:
        saved = resumed_config(workdir)
        different = [f.name for f in dataclasses.fields(Config) if f.name not in RUNTIME_FIELDS
                     and getattr(saved, f.name) != getattr(config, f.name)]
        if different:
            k = different[0]
            raise ConfigError(f"{workdir} was run with {k}={getattr(saved, k)!r}, not "
                              f"{getattr(config, k)!r}: drop that flag to resume the run as it was")
        return
    if os.path.isdir(workdir) and os.listdir(workdir):
        raise ConfigError(f"workdir {workdir} is not empty: choose a new --workdir, or pass "
                          "--resume to continue the run in it (nothing in it was changed)")
    parallel.sync("workdir checked")  # by every process, before the writer fills it
    if not write:
        return
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(config_path, "w") as f:
            f.write(config.to_json() + "\n")
    except OSError as e:
        raise ConfigError(f"cannot write to workdir {workdir} ({e.strerror}): "
                          "choose another --workdir") from None


def train_epoch(state, images, labels, idx, mask, desc, progress):
    """One pass over the batches `idx`, PROGRESS_UPDATES compiled calls, each moving the bar.

    Returns the new state and the stacked per-step metrics. A non-finite loss stops the pass at
    the call where it appeared, raising TrainingError with the step it first showed up in.
    """
    n_steps = len(idx)
    per_call = -(-n_steps // PROGRESS_UPDATES)
    chunks = []
    with tqdm(total=n_steps, desc=desc, unit="step", disable=not progress, leave=False) as bar:
        for first in range(0, n_steps, per_call):
            state, metrics = steps.train_batches(state, images, labels, idx[first:first + per_call],
                                                 mask[first:first + per_call])
            losses = np.asarray(metrics["loss_sum"])
            if not np.isfinite(losses).all():
                bad = int(np.argmin(np.isfinite(losses)))
                raise TrainingError(f"loss became {losses[bad]} at {desc}, step {first + bad + 1}"
                                    f"/{n_steps}")
            chunks.append(metrics)
            bar.update(len(losses))
    return state, chunks


def train_and_evaluate(config: Config, workdir: str, progress: bool = True, resume: bool = False):
    """Train `config.model` on CIFAR-10, evaluate after every epoch, write the run to `workdir`.

    Writes config.json, metrics.jsonl (one row per epoch), an Orbax checkpoint per epoch, and
    for the final model confusion_matrix.png, report.txt and history.png. With `resume`, goes
    on from the newest checkpoint in `workdir`, whose config must equal `config`; the result is
    the same as that of an uninterrupted run. Returns the per-epoch rows.
    """
    mesh = parallel.data_mesh()  # batches split over every device, the rest replicated
    try:
        parallel.check_divisible(config.batch_size, mesh)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    replicate, split = parallel.replicated(mesh), parallel.batch_split(mesh)
    writer = parallel.is_writer()
    existed = os.path.isdir(workdir)
    open_run(config, workdir, resume, write=writer)
    try:
        splits = data.load_cifar10(config.data_dir, config.download)
    except data.DataError:
        if writer and not resume:  # leave no half-made run behind, so the same command can be rerun
            os.remove(os.path.join(workdir, "config.json"))
            if not existed:
                os.rmdir(workdir)
        raise
    train_images, train_labels = jax.device_put(splits["train"], replicate)
    test_images, test_labels = jax.device_put(splits["test"], replicate)
    n_train = len(train_labels)

    # The initial weights and every epoch's data order are functions of the seed alone, so a
    # resumed run needs nothing from the interrupted one but its train state.
    init_rng, data_rng = jax.random.split(jax.random.key(config.seed))
    model = MODELS[config.model]()
    state = jax.device_put(
        steps.create_train_state(model, config.optimizer, config.learning_rate, init_rng), replicate)
    eval_batch_size = -(-config.eval_batch_size // mesh.size) * mesh.size  # results don't depend on it
    test_idx, test_mask = jax.device_put(
        jax.device_get(data.batch_indices(len(test_labels), eval_batch_size)), split)
    metrics_path = os.path.join(workdir, "metrics.jsonl")

    ckpt = checkpoint.manager(workdir, config.keep)
    history, predictions = [], None
    if resume:
        state, done = checkpoint.restore(ckpt, state)
        with open(metrics_path) as f:
            history = [row for row in map(json.loads, f) if row["epoch"] <= done]
        if writer:
            _write_json_lines(metrics_path, history)  # drop rows of epochs whose checkpoint never landed
            print(f"resuming after epoch {done}", flush=True)
    try:
        for epoch in range(len(history) + 1, config.epochs + 1):
            start = time.perf_counter()
            idx, mask = jax.device_put(jax.device_get(data.batch_indices(
                n_train, config.batch_size, jax.random.fold_in(data_rng, epoch))), split)
            desc = f"epoch {epoch}/{config.epochs}"
            try:
                state, train_metrics = train_epoch(state, train_images, train_labels, idx, mask,
                                                   desc, progress)
            except TrainingError as e:
                kept = (f"the last good checkpoint (epoch {epoch - 1}) is kept in {workdir}"
                        if epoch > 1 else "no epoch had finished, so no checkpoint was written")
                raise TrainingError(f"{e}: lower --learning-rate; {kept}") from None
            seconds = time.perf_counter() - start
            train = steps.summarise(train_metrics)
            test_metrics, predictions = steps.eval_batches(state, test_images, test_labels,
                                                           test_idx, test_mask)
            test = steps.summarise(test_metrics)
            row = {"epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
                   "test_loss": test["loss"], "test_accuracy": test["accuracy"],
                   "seconds": round(seconds, 3)}
            history.append(row)
            if writer:
                _write_json_lines(metrics_path, history)
            checkpoint.save(ckpt, epoch, state)  # every process takes part; Orbax writes once
            if writer:
                print(f"{desc}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}  "
                      f"test loss {row['test_loss']:.4f} acc {row['test_accuracy']:.4f}  "
                      f"{seconds:.1f}s ({n_train / seconds:,.0f} img/s)", flush=True)
    finally:  # also on Ctrl-C: let the last epoch's checkpoint finish landing
        ckpt.wait_until_finished()
        ckpt.close()

    if predictions is None:  # resumed a run whose epochs were all done
        predictions = steps.eval_batches(state, test_images, test_labels, test_idx, test_mask)[1]
    predicted = parallel.gather_from_processes(predictions)[parallel.gather_from_processes(test_mask) > 0]
    if not writer:
        return history
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
    p.add_argument("--model", choices=sorted(MODEL_DEFAULTS),
                   help="which network: 'mlp' (Dense 3000-1000-10, SGD, 5 epochs) or "
                        "'cnn' (two conv blocks, Adam, 10 epochs) (default: cnn)")
    p.add_argument("--optimizer", choices=sorted(steps.OPTIMIZERS),
                   help="optax optimiser (default: sgd for mlp, adam for cnn)")
    p.add_argument("--learning-rate", type=positive(float),
                   help="learning rate (default: 0.01 for sgd, 0.001 for adam)")
    p.add_argument("--epochs", type=positive(int), help="passes over the 50,000 training images "
                                                        "(default: 5 for mlp, 10 for cnn)")
    p.add_argument("--batch-size", type=positive(int),
                   help="training batch size; the last partial batch is trained on too (default: 32)")
    p.add_argument("--seed", type=int,
                   help="seeds the initial weights and the shuffling: same seed, same run (default: 0)")
    p.add_argument("--data-dir", help="TFDS data dir holding a prepared cifar10; CIFAR-10 is "
                                      "downloaded there if missing (default: $TFDS_DATA_DIR, else "
                                      "~/tensorflow_datasets)")
    p.add_argument("--no-download", dest="download", action="store_const", const=False,
                   help="fail at once, rather than download, when the data dir lacks cifar10")
    p.add_argument("--workdir", help="where the run's files go; must be new or empty unless "
                                     "--resume (default: runs/MODEL-DATE-TIME)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --workdir from its newest checkpoint, with its saved "
                        "settings (a flag that contradicts them is an error)")
    p.add_argument("--keep", type=positive(int), help="how many epoch checkpoints to keep (default: 3)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar, only one line per epoch")
    args = p.parse_args(argv)
    if args.resume and not args.workdir:
        p.error("--resume needs --workdir: the folder of the run to continue")
    return args


def main(argv=None):
    args = parse_args(argv)
    settings = {k: getattr(args, k) for k in ("optimizer", "learning_rate", "epochs", "batch_size",
                                              "seed", "data_dir", "download", "keep")}
    workdir = args.workdir
    parallel.initialize()
    try:
        if args.resume:
            explicit = {k: v for k, v in {**settings, "model": args.model}.items() if v is not None}
            config = dataclasses.replace(resumed_config(args.workdir), **explicit).validated()
        else:
            config = Config.for_model(args.model or "cnn", **settings)
        workdir = args.workdir or os.path.join(
            "runs", f"{config.model}-{time.strftime('%Y%m%d-%H%M%S')}")
        print(describe_devices(), flush=True)
        print(f"training {config.model} ({config.optimizer}, lr {config.learning_rate}, "
              f"{config.epochs} epochs, batch {config.batch_size}) -> {workdir}", flush=True)
        history = train_and_evaluate(config, workdir, progress=args.progress, resume=args.resume)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (data.DataError, checkpoint.CheckpointError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: every finished epoch is checkpointed in {workdir}; continue with: "
              f"python -m cifar_jax.train --workdir {workdir} --resume", file=sys.stderr)
        return 130
    final = history[-1]
    print(f"done: test accuracy {final['test_accuracy']:.4f}; files in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
