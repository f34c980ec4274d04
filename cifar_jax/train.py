"""Train a CIFAR-10 classifier: `train_and_evaluate(config, workdir)` and its epoch loop. The
command line (`python -m cifar_jax.train`) is `main.py`'s.

Every run trains a stack of N >= 1 models (`stack.py`): one model, `--num-seeds` seeds, a sweep's
points and seeds. The loop below reads the same for all; what differs is N and the models' names.
"""

import sys

if __name__ == "__main__":  # python -m cifar_jax.train: main.py's command line, before the body
    from cifar_jax import hugepages

    hugepages.restart()  # before JAX is imported, so that starting again costs little
    from cifar_jax.main import main  # below: main imports it as cifar_jax.train, and only once

    sys.exit(main())

import contextlib
import functools
import math
import os
import time

import jax
import numpy as np
from tqdm import tqdm

from cifar_jax import (
    checkpoint,
    compilation,
    contracts,
    data,
    evaluate,
    log,
    parallel,
    programs,
    report,
    run,
    stack,
    steps,
    sweep,
    train_state,
)
from cifar_jax.config import Config, ConfigError

PROGRESS_UPDATES = 20  # compiled calls per epoch: the progress bar moves this many times


class TrainingError(RuntimeError):
    """Training cannot go on (the loss diverged); the message says where and what to do."""


class Stopped(Exception):
    """A signal stopped the run; every step it took is checkpointed. The message says where."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum


def train_epoch(state, images, labels, idx, mask, key, epoch, desc, progress, first=0, stop=None,
                names=("",), diverged=None, all_may=False, frozen_from=None):
    """The batches `idx[:, first:]` of one epoch of a stack of N models (`idx`, `mask`, `key`
    each model's, [N, ...]; `names` theirs), in compiled calls of a PROGRESS_UPDATES-th of it,
    each moving the bar.

    Returns (state, each call's metric sums as numpy, batches done): fewer than the epoch's
    when `stop` was set, which is looked at before each call. A loss that is not finite, or is
    above `steps.DIVERGED_LOSS`, raises TrainingError naming the step it first showed up in; in
    a sweep (`diverged`, a set), where a point's value may well be too large, the models it
    happens to are added to `diverged` and the others train on, unless all have diverged (and
    not `all_may`: a program of a sweep of several, whose other programs train on).
    `frozen_from` ({parameter path: batch of this epoch}, from `train_state.freezing`) says from
    which call on the steps take no gradient for a parameter the optimiser no longer changes
    (a second program, compiled once).
    """
    n_steps = idx.shape[1]
    per_call = -(-n_steps // PROGRESS_UPDATES)  # a resumed epoch starts on a call boundary
    train_batches = steps.train_batches_stacked(len(idx))
    recipe = state.recipe if frozen_from else None  # the run's, for evaluation after
    chunks = []

    def read(start, metrics):  # waits for the call that computed `metrics`
        metrics = jax.device_get(metrics)
        first = np.asarray(metrics["first_diverged"])  # [models]
        bad = first >= 0
        if bad.any() and diverged is not None and (all_may or not bad.all()):
            diverged.update(np.flatnonzero(bad))
        elif bad.any():
            model = int(np.argmin(np.where(bad, first, n_steps)))
            value = float(np.asarray(metrics["diverged_loss"])[model])
            how = (f"reached {value:.4g} (over 100 x ln 10)" if np.isfinite(value)
                   else f"became {value}")
            which = f" ({names[model]})" if names[model] else ""
            raise TrainingError(f"loss {how}{which} at {desc}, step "
                                f"{start + int(first[model]) + 1}/{n_steps}")
        chunks.append(metrics)
        bar.update(min(per_call, n_steps - start))

    # Each call's metrics are read once the next call is on its way: calls are dispatched
    # without waiting, so the device never idles while the host reads them (a GPU, whose call
    # of a few steps takes milliseconds); a divergence still stops the run at the call after.
    pending, done = None, n_steps
    with tqdm(total=n_steps, initial=first, desc=desc, unit="step", disable=not progress,
              leave=False) as bar:
        for start in range(first, n_steps, per_call):
            if stop:
                done = start
                break
            part = slice(start, start + per_call)
            if frozen_from:
                state = freeze(state, recipe, frozen_from, start)
            state, metrics = train_batches(state, images, labels, idx[:, part], mask[:, part],
                                           key, epoch - 1)
            if pending:
                read(*pending)
            pending = start, metrics
        if pending:
            read(*pending)
    return (state.replace(recipe=recipe) if recipe else state), chunks, done


def freeze(state, recipe, frozen_from, step):
    """`state` with `recipe`, its `frozen` the parameters frozen by `step` ({parameter path:
    the step it is frozen from}, `train_state.freezing`)."""
    frozen = tuple(sorted(path for path, first in frozen_from.items() if first <= step))
    return state.replace(recipe=recipe._replace(frozen=frozen))


def train_and_evaluate(config: Config, workdir: str, progress: bool = True, resume: bool = False,
                       stop=None):
    """Train `config.model` on CIFAR-10, evaluate after every epoch, write the run to `workdir`.

    Writes config.json, metrics.jsonl (one row per epoch), TensorBoard events, an Orbax
    checkpoint per epoch, and for the final model confusion_matrix.png, report.txt and
    history.png. An epoch counts as done once its checkpoint has landed: only then do its row
    and TensorBoard scalars appear. With `resume`, goes on from the newest readable checkpoint
    in `workdir`, whose config must equal `config` but for what `run.check_resumable` allows;
    the result is the same as that of an uninterrupted run. `stop` (`signals.Stop`): once set,
    the run checkpoints its current step and raises Stopped. A sweep of several programs
    trains them in turn, each in `sweep.program_dir(workdir, k)`; a resumed one does not train
    a finished program again. Returns the per-epoch rows.
    """
    is_main_process = parallel.is_main_process()
    plan = _checked_plan(config, workdir, resume)
    created = not os.path.isdir(workdir)
    with run.lock(workdir) if is_main_process else contextlib.nullcontext():
        if not resume:
            run.create(config, workdir, is_main_process)  # checks again, holding the lock
        elif is_main_process and config != run.resumed_config(workdir):
            run.write_config(config, workdir)  # more epochs, or a new learning rate
        if is_main_process:
            print(f"training {describe_run(config)} -> {workdir}", flush=True)
            if config.sweep:
                print(sweep.describe_plan(config, plan), flush=True)
        try:
            splits = _load_data(config, plan)
        except (data.DataError, ConfigError):
            if is_main_process and not resume:  # leave no half-made run behind
                run.discard(workdir, created)
            raise
        if len(plan) > 1:
            return programs.train_in_turn(config, workdir, plan, splits, _train, progress, stop)
        history, predicted, state, test = _train(config, workdir, splits, progress, resume, stop)
        if is_main_process:
            if predicted is None:  # resumed a run whose epochs were all done
                predicted = evaluate.final_predictions(state, test, config, history[-1])
            report.write_run_reports(config, workdir, splits["test"][1], predicted, history)
        return history


def _checked_plan(config, workdir, resume):
    """`programs.plan(config)`, once the run may start: refusals come before anything is
    touched, and before the training is announced (a piece that breaks its contract: one line,
    nothing written). Its contracts' notes go to stderr."""
    if resume:
        run.check_resumable(config, workdir)
    else:
        run.check_new(workdir)
    plan = programs.plan(config)
    notes = []
    for static, program in plan:
        try:
            parallel.check_divisible(program.batch_size, parallel.data_mesh(program.members))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        with programs.named(static):
            notes += [note for note in contracts.check(program) if note not in notes]
    if parallel.is_main_process():
        for note in notes:
            print(note, file=sys.stderr, flush=True)
    return plan


def _load_data(config, plan):
    """The CIFAR-10 splits, with each program's batch size checked against them."""
    splits = data.load_cifar10(config.data_dir, config.download, config.archive)
    n_train = len(splits["train"][1])
    for _, program in plan:
        if not train_state.run_length(program, n_train)[0]:
            raise ConfigError(f"--batch-size {program.batch_size} is more than the {n_train} "
                              "training images, and the recipe drops partial batches: use a "
                              "smaller --batch-size")
    return splits


def describe_run(config):
    """'cnn (adam, lr 0.001, model.dense=32, 10 epochs, batch 32, float32)': the pieces'
    settings the run gives, and the swept settings' values where they are swept."""
    swept = dict(config.sweep)
    lr = ("" if "learning_rate" in swept or config.learning_rate is None
          else f", lr {config.learning_rate}")
    values = "".join([*(f", {name}={sweep.text(value)}" for name, value in config.settings.items()),
                      *(f", {name} in {{{', '.join(map(sweep.text, values))}}}"
                        for name, values in config.sweep)])
    epochs = ("" if "epochs" in swept else
              f", {config.epochs:g} epoch{'s' if config.epochs != 1 else ''}")
    batch = "" if "batch_size" in swept else f", batch {config.batch_size}"
    return f"{config.model} ({config.optimizer}{lr}{values}{epochs}{batch}, {config.dtype})"


def _train(config, workdir, splits, progress, resume, stop, program=None):
    """The epochs of `train_and_evaluate` (of one `program` of a sweep of several,
    `programs.Program`: its own run folder, its points named in full), the run folder ready
    and held. Returns (the rows, the final epoch's predicted test classes or None where no
    epoch was left to train, the state, the test set)."""
    top = program.workdir if program else workdir  # what the messages and TensorBoard name
    models = stack.Stack.of(config, program and functools.partial(sweep.full, program.sweep,
                                                                  program.static))
    mesh = parallel.data_mesh(config.members)  # batches over "data", the models over "models"
    n_train = len(splits["train"][1])
    steps_per_epoch, total_steps = train_state.run_length(config, n_train)
    n_epochs = math.ceil(config.epochs)
    train_images, train_labels = jax.device_put(splits["train"], parallel.replicated(mesh))
    test = evaluate.place_test_set(*splits["test"], config.eval_batch_size, mesh)
    init_key, data_key, step_key = models.keys()
    placed = parallel.models_split(mesh)
    state = jax.device_put(train_state.from_config(config, init_key, n_train, splits["train"][0]),
                           placed)
    saved = checkpoint.RunCheckpoints(workdir, config.keep_checkpoints, models.alone)
    done, first, partial, history = 0, 0, [], []  # epochs done; batches done of the next one
    if resume:
        state, done, first, partial = saved.resume(state, steps_per_epoch)
        state = jax.device_put(state, placed)  # a lone model's checkpoint holds it unstacked
        history = _history(config, workdir, done, first, steps_per_epoch)
    saved_step = train_state.steps_done(state)
    epoch_log = log.EpochLog(top, config, models, done + 1)
    multiplier = train_state.optimizer(config, n_train)[1]
    freezing = train_state.freezing(config, n_train, state.params)
    diverged = set() if models.swept else None  # a sweep's models whose loss diverged
    compiled = compilation.Tally()  # what each epoch compiled, for its line
    where = f"program {program.index + 1}/{program.count}, " if program else ""
    predicted = None
    try:
        for epoch in range(done + 1, n_epochs + 1):
            compiled.reset()
            start = time.perf_counter()
            idx, mask = stack.epoch_batches(n_train, config.batch_size, data_key, epoch)
            # The last epoch of a fractional run stops early; drop_last drops the partial batch.
            steps_now = min(steps_per_epoch, total_steps - (epoch - 1) * steps_per_epoch)
            idx, mask = jax.device_get((idx[:, :steps_now], mask[:, :steps_now]))
            n_images = int(mask[:, first:].sum())  # all models'; on the host: no collective
            idx, mask = jax.device_put((idx, mask), parallel.batch_split(mesh, stacked=True))
            desc = f"{where}epoch {epoch}/{n_epochs}"
            first_step = (epoch - 1) * steps_per_epoch
            try:
                state, chunks, batches = train_epoch(
                    state, train_images, train_labels, idx, mask, step_key, epoch, desc, progress,
                    first, stop, models.labels, diverged, bool(program),
                    {path: step - first_step for path, step in freezing.items()})
            except TrainingError as e:
                raise _diverged(e, config, workdir, models, saved) from None
            partial += chunks
            if batches < steps_now:  # a signal: save this exact step, mid-epoch
                if train_state.steps_done(state) > saved_step:
                    with _writing(top):
                        saved.save_interrupted(train_state.steps_done(state), state, partial)
                raise Stopped(f"stopped by {stop.name} at {desc}, step {batches}/{steps_now}: "
                              f"every step is checkpointed; continue with: "
                              f"{run.resume_command(top)}", stop.signum)
            seconds, compiling = time.perf_counter() - start, str(compiled)
            row, predicted = stack.epoch_row(models, config, state, test, partial, epoch, seconds,
                                             config.tta if epoch == n_epochs else None)
            first, partial = 0, []
            history.append(row)
            with _writing(top):  # the epoch is done once its checkpoint has landed, and only then
                if parallel.is_main_process():
                    run.write_metrics(workdir, history, commit=False)
                saved.save_epoch(epoch, state)  # every process takes part; Orbax writes once
                if parallel.is_main_process():
                    run.commit_metrics(workdir)
            saved_step = train_state.steps_done(state)
            last_step = (epoch - 1) * steps_per_epoch + steps_now - 1
            epoch_log.epoch(row, desc, seconds, n_images, compiling, multiplier(last_step),
                            diverged)
            if diverged:
                diverged.clear()
    finally:
        saved.close()
        epoch_log.close()
        compiled.close()
    return history, predicted, state, test


def _history(config, workdir, done, first, steps_per_epoch):
    """The metrics rows of the `done` epochs a resumed run has checkpoints of; the rows of
    epochs whose checkpoint never landed are dropped from metrics.jsonl."""
    history = sweep.named(config, run.read_metrics(workdir, last_epoch=done))
    if len(history) != done:
        raise run.RunError(f"{workdir}/metrics.jsonl lacks epochs that are checkpointed: it "
                           "was changed by hand; start a new run")
    if parallel.is_main_process():
        run.write_metrics(workdir, history)
        print(f"resuming in epoch {done + 1} after step {first}/{steps_per_epoch}"
              if first else f"resuming after epoch {done}" if done else
              "no checkpoint yet: starting from the beginning", flush=True)
    return history


def _diverged(error, config, workdir, models, saved):
    """The TrainingError that ends a run whose loss diverged: what to do next. (A sweep's
    models train on past a divergence, so there every model has diverged.)"""
    if models.swept:
        return TrainingError(f"{error}, and every other point and seed diverged too: start a new "
                             "sweep with smaller values")
    kept = ("the checkpoints before it are kept; to go on from the newest"
            if saved.latest_epoch() else "no epoch had finished; to start again")
    lower = f"--learning-rate {config.learning_rate / 10:g}"
    return TrainingError(f"{error}: {kept} with a lower learning rate: "
                         f"{run.resume_command(workdir)} {lower}")


@contextlib.contextmanager
def _writing(workdir):
    """A write that fails (no space, say) stops the run with one line and the way back."""
    try:
        yield
    except (checkpoint.CheckpointError, run.RunError) as e:
        raise type(e)(f"{e}; the run stopped there: fix that, then continue with: "
                      f"{run.resume_command(workdir)}") from None
