"""Train a CIFAR-10 classifier: the epoch loop, `train_and_evaluate(config, workdir)`, and its
command line.

    python -m cifar_jax.train --model cnn        # the tutorial's CNN, Adam, 10 epochs
    python -m cifar_jax.train --model mlp        # the tutorial's MLP, SGD, 5 epochs
"""

import dataclasses
import math
import os
import sys
import time

import jax
import numpy as np
from tqdm import tqdm

from cifar_jax import checkpoint, data, evaluate, parallel, report, run, steps
from cifar_jax import state as train_state
from cifar_jax.cli import OneLineParser, add_config_flags, config_overrides
from cifar_jax.config import Config, ConfigError

PROGRESS_UPDATES = 20  # compiled calls per epoch: the progress bar moves this many times


def describe_devices():
    """'cpu, 1 device' / 'gpu, 8 devices': the backend and how many devices train."""
    n = jax.device_count()
    return f"{jax.default_backend()}, {n} device{'s' if n != 1 else ''}"


class TrainingError(RuntimeError):
    """Training cannot go on (the loss diverged); the message says where and what to do."""


def seed_keys(seed):
    """(init, data, step) PRNG keys: the initial weights, each epoch's data order, and each
    step's randomness (dropout, augmentation) all come from the seed alone, so a resumed run
    needs nothing from the interrupted one but its train state."""
    root = jax.random.key(seed)
    init_key, data_key = jax.random.split(root)
    return init_key, data_key, jax.random.fold_in(root, 2)


def train_epoch(state, images, labels, idx, mask, key, epoch, desc, progress):
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
                                                 mask[first:first + per_call], key, epoch - 1)
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

    Writes config.json, metrics.jsonl (one row per epoch), TensorBoard events, an Orbax
    checkpoint per epoch, and for the final model confusion_matrix.png, report.txt and
    history.png. With `resume`, goes on from the newest checkpoint in `workdir`, whose config
    must equal `config`; the result is the same as that of an uninterrupted run. Returns the
    per-epoch rows.
    """
    mesh = parallel.data_mesh()  # batches split over every device, the rest replicated
    try:
        parallel.check_divisible(config.batch_size, mesh)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    replicate, split = parallel.replicated(mesh), parallel.batch_split(mesh)
    is_main_process = parallel.is_main_process()
    if resume:
        run.check_resumable(config, workdir)
    else:
        created = run.create(config, workdir, is_main_process)
    try:
        splits = data.load_cifar10(config.data_dir, config.download, config.archive)
        n_train = len(splits["train"][1])
        steps_per_epoch, total_steps = train_state.run_length(config, n_train)
        if not steps_per_epoch:
            raise ConfigError(f"--batch-size {config.batch_size} is more than the {n_train} "
                              "training images, and the recipe drops partial batches: use a "
                              "smaller --batch-size")
    except (data.DataError, ConfigError):
        if is_main_process and not resume:  # leave no half-made run behind
            run.discard(workdir, created)
        raise
    train_images, train_labels = jax.device_put(splits["train"], replicate)
    test = evaluate.place_test_set(*splits["test"], config.eval_batch_size, mesh)

    init_key, data_key, step_key = seed_keys(config.seed)
    _, learning_rate = train_state.optimizer(config, n_train)
    state = jax.device_put(train_state.from_config(config, init_key, n_train, splits["train"][0]),
                           replicate)
    ckpt = checkpoint.manager(workdir, config.keep_checkpoints)
    history, predicted = [], None
    if resume:
        state, done = checkpoint.restore(ckpt, state)
        history = run.read_metrics(workdir, last_epoch=done)
        if is_main_process:
            run.write_metrics(workdir, history)  # drop rows of epochs whose checkpoint never landed
            print(f"resuming after epoch {done}", flush=True)
    tensorboard = run.tensorboard(workdir, first_epoch=len(history) + 1) if is_main_process else None
    try:
        for epoch in range(len(history) + 1, math.ceil(config.epochs) + 1):
            start = time.perf_counter()
            idx, mask = data.batch_indices(n_train, config.batch_size,
                                           jax.random.fold_in(data_key, epoch))
            # The last epoch of a fractional run stops early; drop_last drops the partial batch.
            steps_now = min(steps_per_epoch, total_steps - (epoch - 1) * steps_per_epoch)
            idx, mask = jax.device_get((idx[:steps_now], mask[:steps_now]))
            n_images = int(mask.sum())  # on the host: every process knows it, no collective
            idx, mask = jax.device_put((idx, mask), split)
            desc = f"epoch {epoch}/{math.ceil(config.epochs)}"
            try:
                state, train_metrics = train_epoch(state, train_images, train_labels, idx, mask,
                                                   step_key, epoch, desc, progress)
            except TrainingError as e:
                kept = (f"the last good checkpoint (epoch {epoch - 1}) is kept in {workdir}"
                        if epoch > 1 else "no epoch had finished, so no checkpoint was written")
                raise TrainingError(f"{e}: lower --learning-rate; {kept}") from None
            seconds = time.perf_counter() - start
            train = steps.summarise(train_metrics)
            test_metrics, predicted = evaluate.evaluate(state, test)
            row = {"epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
                   "test_loss": test_metrics["loss"], "test_accuracy": test_metrics["accuracy"],
                   "seconds": round(seconds, 3)}
            if config.tta and epoch == math.ceil(config.epochs):  # its predictions go in the reports
                tta, predicted = evaluate.evaluate(state, test, config.tta)
                row.update(test_loss_tta=tta["loss"], test_accuracy_tta=tta["accuracy"])
            history.append(row)
            if is_main_process:
                run.write_metrics(workdir, history)
                run.log_epoch(tensorboard, row, {
                    "images_per_second": n_images / seconds,
                    "learning_rate": learning_rate((epoch - 1) * steps_per_epoch + steps_now - 1)})
            checkpoint.save(ckpt, epoch, state)  # every process takes part; Orbax writes once
            if is_main_process:
                print(f"{desc}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}  "
                      f"test loss {row['test_loss']:.4f} acc {row['test_accuracy']:.4f}  "
                      f"{seconds:.1f}s ({n_images / seconds:,.0f} img/s)"
                      + (f"  test acc with TTA {row['test_accuracy_tta']:.4f}"
                         if "test_accuracy_tta" in row else ""), flush=True)
    finally:  # also on Ctrl-C: let the last epoch's checkpoint finish landing
        ckpt.wait_until_finished()
        ckpt.close()
        if tensorboard is not None:
            tensorboard.close()

    if predicted is None:  # resumed a run whose epochs were all done
        predicted = evaluate.evaluate(state, test)[1]
    if is_main_process:
        evaluate.write_reports(workdir, splits["test"][1], predicted)
        report.plot_history(history, os.path.join(workdir, "history.png"))
    return history


def parse_args(argv=None):
    p = OneLineParser(
        prog="python -m cifar_jax.train",
        description="Train a CIFAR-10 classifier with JAX (the Keras tutorial's MLP or CNN, or the "
                    "airbench94 recipe), "
                    "evaluate it on the test set after every epoch, and write metrics, "
                    "TensorBoard events, plots and checkpoints to --workdir.")
    add_config_flags(p)
    p.add_argument("--workdir", help="where the run's files go; must be new or empty unless "
                                     "--resume (default: runs/MODEL-DATE-TIME)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --workdir from its newest checkpoint, with its saved "
                        "settings (a flag that contradicts them is an error)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar, only one line per epoch")
    args = p.parse_args(argv)
    if args.resume and not args.workdir:
        p.error("--resume needs --workdir: the folder of the run to continue")
    return args


def main(argv=None):
    args = parse_args(argv)
    overrides = config_overrides(args)
    workdir = args.workdir
    parallel.initialize()
    try:
        if args.resume:
            config = dataclasses.replace(run.resumed_config(workdir), **overrides)
        else:
            config = Config.for_model(**overrides)
        workdir = workdir or os.path.join("runs", f"{config.model}-{time.strftime('%Y%m%d-%H%M%S')}")
        print(describe_devices(), flush=True)
        print(f"training {config.model} ({config.optimizer}, lr {config.learning_rate}, "
              f"{config.epochs} epoch{'s' if config.epochs != 1 else ''}, batch "
              f"{config.batch_size}, {config.dtype}) -> {workdir}", flush=True)
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
