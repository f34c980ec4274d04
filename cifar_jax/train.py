"""Train a CIFAR-10 classifier: the epoch loop, `train_and_evaluate(config, workdir)`, and its
command line.

    python -m cifar_jax.train --model cnn        # the tutorial's CNN, Adam, 10 epochs
    python -m cifar_jax.train --model mlp        # the tutorial's MLP, SGD, 5 epochs
"""

import contextlib
import dataclasses
import functools
import math
import os
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from cifar_jax import (
    checkpoint,
    compilation,
    contracts,
    data,
    evaluate,
    parallel,
    report,
    run,
    signals,
    steps,
    sweep,
)
from cifar_jax import seeds as multi_seed
from cifar_jax import state as train_state
from cifar_jax.cli import (
    SETTINGS_HELP,
    OneLineParser,
    add_config_flags,
    add_piece_help,
    config_overrides,
    help_config,
    split_settings,
)
from cifar_jax.config import Config, ConfigError, check_sweep_flags

PROGRESS_UPDATES = 20  # compiled calls per epoch: the progress bar moves this many times


def describe_devices():
    """'cpu, 1 device' / 'gpu, 8 devices': the backend and how many devices train."""
    n = jax.device_count()
    return f"{jax.default_backend()}, {n} device{'s' if n != 1 else ''}"


class TrainingError(RuntimeError):
    """Training cannot go on (the loss diverged); the message says where and what to do."""


class Stopped(Exception):
    """A signal stopped the run; every step it took is checkpointed. The message says where."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum


def seed_keys(seed):
    """(init, data, step) PRNG keys: the initial weights, each epoch's data order, and each
    step's randomness (dropout, augmentation) all come from the seed alone, so a resumed run
    needs nothing from the interrupted one but its train state."""
    root = jax.random.key(seed)
    init_key, data_key = jax.random.split(root)
    return init_key, data_key, jax.random.fold_in(root, 2)


def default_workdir(config):
    """runs/MODEL-DATE-TIME ('module.Class' for an import path), made unique with a suffix."""
    base = os.path.join("runs", f"{config.model.replace(':', '.')}-{time.strftime('%Y%m%d-%H%M%S')}")
    return next(path for path in (base, *(f"{base}-{i}" for i in range(2, 1000)))
                if not os.path.exists(path))


def resume_command(workdir):
    return f"python -m cifar_jax.train --workdir {workdir} --resume"


def train_epoch(state, images, labels, idx, mask, key, epoch, desc, progress, first=0, stop=None,
                members=None, diverged=None, all_may=False):
    """The batches `idx[..., first:, :]` of one epoch, in compiled calls of a
    PROGRESS_UPDATES-th of it, each moving the bar. For a stacked state (N models), `idx`,
    `mask` and `key` have a leading model axis; `members` names the models.

    Returns (state, each call's metric sums as numpy, batches done): fewer than the epoch's
    when `stop` was set, which is looked at before each call. A loss that is not finite, or is
    above `steps.DIVERGED_LOSS`, raises TrainingError naming the step it first showed up in; in
    a sweep (`diverged`, a set), where a point's value may well be too large, the models it
    happens to are added to `diverged` and the others train on, unless all have diverged (and
    not `all_may`: a program of a sweep of several, whose other programs train on).
    """
    n_steps = idx.shape[-2]
    per_call = -(-n_steps // PROGRESS_UPDATES)  # a resumed epoch starts on a call boundary
    train_batches = steps.train_batches_stacked() if idx.ndim == 3 else steps.train_batches
    chunks = []
    with tqdm(total=n_steps, initial=first, desc=desc, unit="step", disable=not progress,
              leave=False) as bar:
        for start in range(first, n_steps, per_call):
            if stop:
                return state, chunks, start
            part = slice(start, start + per_call)
            state, metrics = train_batches(state, images, labels, idx[..., part, :],
                                           mask[..., part, :], key, epoch - 1)
            metrics = jax.device_get(metrics)
            first = np.asarray(metrics["first_diverged"])  # [] or, stacked, [models]
            bad = first >= 0
            if bad.any() and diverged is not None and (all_may or not bad.all()):
                diverged.update(np.flatnonzero(bad))
            elif bad.any():
                model = np.unravel_index(np.argmin(np.where(bad, first, n_steps)), first.shape)
                value = float(np.asarray(metrics["diverged_loss"])[model])
                how = (f"reached {value:.4g} (over 100 x ln 10)" if np.isfinite(value)
                       else f"became {value}")
                which = f" ({members[model[0] if model else 0]})" if members else ""
                raise TrainingError(f"loss {how}{which} at {desc}, step "
                                    f"{start + int(first[model]) + 1}/{n_steps}")
            chunks.append(metrics)
            bar.update(idx[..., part, :].shape[-2])
    return state, chunks, n_steps


def epoch_batches(n_train, batch_size, data_key, epoch):
    """This epoch's batch indices and mask, [steps, batch], from the run's data key; for a
    stack of N keys, each model's, [N, steps, batch], as its own run would draw them."""
    def draw(key):
        return data.batch_indices(n_train, batch_size, jax.random.fold_in(key, epoch))

    return jax.vmap(draw)(data_key) if data_key.ndim else draw(data_key)


def epoch_row(state, test, train_metrics, epoch, seconds, final_tta=None, config=None):
    """(the epoch's metrics.jsonl row, the predicted test classes for the reports).

    `final_tta`: not None for the final epoch, which adds test-time augmentation's figures
    (when the recipe has it) and, for N models, their ensemble's and the 95% confidence
    interval of the test accuracy. N models' rows hold the means, `_std`s and `per_seed`; a
    sweep's (`config.sweep`) hold one such entry per point under "points", and its reports
    show the best point.
    """
    stacked = train_state.is_stacked(state)
    if not stacked:
        train, (tests, predicted) = [steps.summarise(train_metrics)], evaluate.evaluate(state, test)
        tests, predicted = [tests], predicted[None]
    else:
        train = steps.summarise_models(train_metrics, state.step.shape[0])
        tests, predicted = evaluate.evaluate(state, test)
    rows = [{"train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
             "test_loss": te["loss"], "test_accuracy": te["accuracy"]}
            for tr, te in zip(train, tests)]
    if final_tta:  # its predictions go in the reports
        tta, predicted = evaluate.evaluate(state, test, final_tta)
        for r, t in zip(rows, tta if stacked else [tta]):
            r.update(test_loss_tta=t["loss"], test_accuracy_tta=t["accuracy"])
        predicted = predicted if stacked else predicted[None]
    swept = config is not None and bool(config.sweep)
    entries = [_combined(state, part, test, rows[part], predicted[part], final_tta)
               for _, part in (sweep.parts(config) if swept else [({}, slice(None))])]
    if not swept:
        (row, predicted), = entries
        return {"epoch": epoch, **row, "seconds": round(seconds, 3)}, predicted
    row = {"epoch": epoch, "points": [{"point": point, **entry}
                                       for (point, _), (entry, _) in zip(sweep.parts(config), entries)],
           "seconds": round(seconds, 3)}
    return row, entries[sweep.best(row)][1]


def _combined(state, part, test, rows, predicted, final_tta):
    """(one row of models' rows, the predicted classes): a lone model's own; for N models (those
    of `part` of the state) the mean, std and per_seed values, and in the final epoch their
    ensemble and 95% interval."""
    if len(rows) == 1:
        return rows[0], predicted[0]
    combined = multi_seed.combine(rows)
    row = {k: v for k, v in combined.items() if k != "per_seed"}
    if final_tta is not None:
        if part != slice(None):
            state = jax.tree.map(lambda leaf: leaf[part], state)
        ensemble, predicted = evaluate.ensemble(state, test, final_tta)
        key = "test_accuracy_tta" if final_tta else "test_accuracy"
        row.update(ensemble_test_loss=ensemble["loss"], ensemble_test_accuracy=ensemble["accuracy"],
                   test_accuracy_ci95=list(multi_seed.confidence_interval(combined["per_seed"][key])))
    return {**row, "per_seed": combined["per_seed"]}, predicted


def final_predictions(state, test, config, final):
    """The predicted test classes the reports show: the model's; N models' ensemble; a sweep's
    best point's (`final`: the last metrics row). With the recipe's test-time augmentation."""
    if config.sweep:
        part = sweep.parts(config)[sweep.best(final)][1]
        state = jax.tree.map(lambda x: x[part], state)
    return evaluate.predicted(state, test, config.tta)


def describe(row):
    """An epoch's figures for its line: 'train loss 1.2 acc 0.56  test loss ...', the means ±
    stds of N models, and in the final epoch the TTA and ensemble accuracies."""
    shown = functools.partial(multi_seed.describe, row)
    return ((f"train loss {shown('train_loss')} acc {shown('train_accuracy')}  "
            f"test loss {shown('test_loss')} acc {shown('test_accuracy')}"),
            (f"  test acc with TTA {shown('test_accuracy_tta')}" if "test_accuracy_tta" in row
             else "")
            + (f"  ensemble {row['ensemble_test_accuracy']:.4f}"
               if "ensemble_test_accuracy" in row else ""))


def resume_point(ckpt, interrupted, state, steps_per_epoch):
    """(state, epochs done, batches done of the next epoch, their per-step metrics) to go on
    from: the newest readable checkpoint, a signal's mid-epoch one or an epoch's; the fresh
    `state` when the run has none yet (it never finished an epoch: same seed, same start)."""
    epochs = ckpt.all_steps()
    if [s for s in interrupted.all_steps() if s > max(epochs, default=0) * steps_per_epoch]:
        try:
            restored, step, metrics = checkpoint.restore(interrupted, state, with_metrics=True)
            return restored, step // steps_per_epoch, step % steps_per_epoch, metrics
        except checkpoint.CheckpointError:
            pass  # warned about; the epochs' checkpoints come next
    if not epochs:
        return state, 0, 0, []
    restored, epoch = checkpoint.restore(ckpt, state)
    return restored, epoch, 0, []


class Program(NamedTuple):
    """A program of a sweep of several (`sweep.programs`), as `_train` needs to know it: the
    whole sweep's config and folder, the program's static point, its number and how many."""

    sweep: Config
    workdir: str
    static: dict
    index: int
    count: int


def plan(config, n_train=50_000):
    """[(static point, program config)] that `config` trains (`sweep.programs`): one program
    unless the sweep varies a setting the pieces cannot take as a traced value (a shape, a
    model, the batch size: `sweep.may_be_data`, `contracts.untraceable`)."""
    if not config.sweep:
        return [({}, config)]
    maybe = [name for name, _ in config.sweep if sweep.may_be_data(config, name)]
    untraceable = set()
    if maybe:
        for static, program in sweep.programs(config, maybe):
            with _named(static):
                untraceable.update(contracts.untraceable(program, n_train))
    return sweep.programs(config, [name for name in maybe if name not in untraceable])


@contextlib.contextmanager
def _named(static):
    """A program's contract errors name its point."""
    try:
        yield
    except ConfigError as e:
        if not static:
            raise
        raise type(e)(f"point {sweep.label(static)}: {e}") from None


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
    if resume:  # refusals come before anything is touched, and before the training is announced
        run.check_resumable(config, workdir)
    else:
        run.check_new(workdir)
    programs = plan(config)
    notes = []
    for static, program in programs:  # a piece that breaks its contract: one line, nothing written
        try:
            parallel.check_divisible(program.batch_size, parallel.data_mesh(program.members))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        with _named(static):
            notes += [note for note in contracts.check(program) if note not in notes]
    created = not os.path.isdir(workdir)
    with run.lock(workdir) if is_main_process else contextlib.nullcontext():
        if not resume:
            run.create(config, workdir, is_main_process)  # checks again, holding the lock
        elif is_main_process and config != run.resumed_config(workdir):
            run.write_config(config, workdir)  # more epochs, or a new learning rate
        if is_main_process:
            print(f"training {describe_run(config)} -> {workdir}", flush=True)
            if config.sweep:
                print(sweep.describe_plan(config, programs), flush=True)
            for note in notes:
                print(note, file=sys.stderr, flush=True)
        try:
            splits = data.load_cifar10(config.data_dir, config.download, config.archive)
            n_train = len(splits["train"][1])
            for _, program in programs:
                if not train_state.run_length(program, n_train)[0]:
                    raise ConfigError(f"--batch-size {program.batch_size} is more than the "
                                      f"{n_train} training images, and the recipe drops partial "
                                      "batches: use a smaller --batch-size")
        except (data.DataError, ConfigError):
            if is_main_process and not resume:  # leave no half-made run behind
                run.discard(workdir, created)
            raise
        if len(programs) == 1:
            history, predicted, state, test = _train(config, workdir, splits, progress, resume,
                                                     stop)
            if is_main_process:
                with _reports(workdir):
                    if predicted is None:  # resumed a run whose epochs were all done
                        predicted = final_predictions(state, test, config, history[-1])
                    write_reports(config, workdir, splits["test"][1], predicted, history)
            return history
        return _train_programs(config, workdir, programs, splits, progress, stop)


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


def _train_programs(config, workdir, programs, splits, progress, stop):
    """The programs of a sweep of several, in turn, each a run folder of its own in
    `sweep.program_dir`; one finished already (a resumed sweep) is not trained again. The
    sweep's metrics.jsonl merges theirs; its reports are over all points."""
    is_main_process = parallel.is_main_process()
    histories, predicted = [], {}
    for k, (static, program) in enumerate(programs):
        folder = sweep.program_dir(workdir, k)
        saved = os.path.isfile(os.path.join(folder, "config.json"))
        history = sweep.named(program, run.read_metrics(folder)) if saved else []
        where = f"program {k + 1}/{len(programs)}, {sweep.label(static)}"
        if saved and len(history) == math.ceil(program.epochs):
            if is_main_process:
                print(f"{where}: trained already", flush=True)
        else:
            if saved:
                try:
                    run.check_resumable(program, folder)
                except ConfigError as e:
                    raise run.RunError(f"{where} in {folder} differs from what the sweep trains "
                                       f"now ({e}); start the sweep in a new --workdir") from None
                if is_main_process and program != run.resumed_config(folder):
                    run.write_config(program, folder)  # more epochs, or a new learning rate
            else:
                run.create(program, folder, is_main_process)
            if is_main_process:
                print(f"{where} -> {folder}", flush=True)
            history, predicted[k], *_ = _train(
                program, folder, splits, progress, saved, stop,
                Program(config, workdir, static, k, len(programs)))
        histories.append((static, history))
        if is_main_process:
            run.write_metrics(workdir, sweep.merged(config, histories))
    history = sweep.merged(config, histories)
    if is_main_process:
        final = sweep.final(history)
        best = config.points()[sweep.best(final)]
        k = next(k for k, (static, _) in enumerate(programs)
                 if all(best[name] == value for name, value in static.items()))
        with _reports(workdir):
            if predicted.get(k) is None:  # its program was trained before this resume
                program = programs[k][1]
                local = {name: best[name] for name, _ in program.sweep}
                _, state, _ = run.load_state(sweep.program_dir(workdir, k), point=local)
                mesh = parallel.data_mesh()
                test = evaluate.place_test_set(*splits["test"], program.eval_batch_size, mesh)
                predicted[k] = evaluate.predicted(
                    jax.device_put(state, parallel.replicated(mesh)), test, program.tta)
            write_reports(config, workdir, splits["test"][1], predicted[k], history)
    return history


def write_reports(config, workdir, labels, predicted, history):
    """The final reports: the confusion matrix and per-class report of `predicted` (the
    model's, the ensemble's, a sweep's best point's), the history plot; a sweep's table and
    plot."""
    evaluate.write_reports(workdir, labels, predicted)
    report.plot_history(history, os.path.join(workdir, "history.png"))
    if config.sweep:
        final = sweep.final(history)
        sweep.write_csv(workdir, config, final)
        report.plot_sweep(config, final, os.path.join(workdir, sweep.PLOT_FILE))


@contextlib.contextmanager
def _reports(workdir):
    try:
        yield
    except OSError as e:
        raise run.RunError(f"cannot write the reports into {workdir}: {e.strerror.lower()}; "
                           f"every epoch is saved: {resume_command(workdir)} writes them "
                           "again") from None


def _train(config, workdir, splits, progress, resume, stop, program=None):
    """The epochs of `train_and_evaluate` (of one `program` of a sweep of several: its own run
    folder, its points named in full), the run folder ready and held. Returns (the rows, the
    final epoch's predicted test classes or None where no epoch was left to train, the state,
    the test set)."""
    is_main_process = parallel.is_main_process()
    top = program.workdir if program else workdir  # what the messages and TensorBoard name
    mesh = parallel.data_mesh(config.members)  # batches over "data", N models over "models"

    def full(point):
        return sweep.full(program.sweep, program.static, point) if program else point

    # N models (seeds, a sweep's points): one stacked state, each model's keys stacked alike
    seeds = config.member_seeds() if config.members > 1 or config.sweep else None
    members = ([f"{sweep.label(full(point))}, seed {config.seed + i}"
                for point in config.points() for i in range(config.num_seeds)]
               if config.sweep or program else [f"seed {seed}" for seed in seeds] if seeds
               else None)
    replicate, split = parallel.replicated(mesh), parallel.batch_split(mesh, stacked=bool(seeds))
    n_train = len(splits["train"][1])
    steps_per_epoch, total_steps = train_state.run_length(config, n_train)
    n_epochs = math.ceil(config.epochs)
    train_images, train_labels = jax.device_put(splits["train"], replicate)
    test = evaluate.place_test_set(*splits["test"], config.eval_batch_size, mesh)

    init_key, data_key, step_key = (
        [jnp.stack(keys) for keys in zip(*map(seed_keys, seeds))] if seeds
        else seed_keys(config.seed))
    _, multiplier = train_state.optimizer(config, n_train)
    state = jax.device_put(train_state.from_config(config, init_key, n_train, splits["train"][0]),
                           parallel.models_split(mesh) if seeds else replicate)
    ckpt = checkpoint.manager(workdir, config.keep_checkpoints)
    interrupted = checkpoint.interrupted_manager(workdir)
    done, first, partial = 0, 0, []  # epochs done; batches done of the next one, their metrics
    history, predicted = [], None
    if resume:
        state, done, first, partial = resume_point(ckpt, interrupted, state, steps_per_epoch)
        history = sweep.named(config, run.read_metrics(workdir, last_epoch=done))
        if len(history) != done:
            raise run.RunError(f"{workdir}/metrics.jsonl lacks epochs that are checkpointed: it "
                               "was changed by hand; start a new run")
        if is_main_process:
            run.write_metrics(workdir, history)  # drop rows of epochs whose checkpoint never landed
            print(f"resuming in epoch {done + 1} after step {first}/{steps_per_epoch}"
                  if first else f"resuming after epoch {done}" if done else
                  "no checkpoint yet: starting from the beginning", flush=True)
    saved_step = train_state.steps_done(state)
    tensorboard = ({sweep.label(point): run.tensorboard(top, done + 1, sweep.label(full(point)))
                    for point in config.points()} if is_main_process else {})
    diverged = set() if config.sweep or program else None  # a sweep's models whose loss diverged
    compiled = compilation.Tally()  # what each epoch compiled, for its line
    where = f"program {program.index + 1}/{program.count}, " if program else ""
    try:
        for epoch in range(done + 1, n_epochs + 1):
            compiled.reset()
            start = time.perf_counter()
            idx, mask = epoch_batches(n_train, config.batch_size, data_key, epoch)
            # The last epoch of a fractional run stops early; drop_last drops the partial batch.
            steps_now = min(steps_per_epoch, total_steps - (epoch - 1) * steps_per_epoch)
            idx, mask = jax.device_get((idx[..., :steps_now, :], mask[..., :steps_now, :]))
            n_images = int(mask[..., first:, :].sum())  # all models'; on the host: no collective
            idx, mask = jax.device_put((idx, mask), split)
            desc = f"{where}epoch {epoch}/{n_epochs}"
            try:
                state, chunks, batches = train_epoch(state, train_images, train_labels, idx, mask,
                                                     step_key, epoch, desc, progress, first, stop,
                                                     members, diverged, all_may=bool(program))
            except TrainingError as e:
                if config.sweep:  # every model diverged
                    raise TrainingError(f"{e}, and every other point and seed diverged too: "
                                        "start a new sweep with smaller values") from None
                kept = ("the checkpoints before it are kept; to go on from the newest"
                        if ckpt.latest_step() else "no epoch had finished; to start again")
                raise TrainingError(
                    f"{e}: {kept} with a lower learning rate: {resume_command(workdir)} "
                    f"--learning-rate {config.learning_rate / 10:g}") from None
            partial += chunks
            if batches < steps_now:  # a signal: save this exact step, mid-epoch
                if train_state.steps_done(state) > saved_step:
                    with _writing(top):
                        checkpoint.save(interrupted, train_state.steps_done(state), state, partial)
                raise Stopped(f"stopped by {stop.name} at {desc}, step {batches}/{steps_now}: "
                              f"every step is checkpointed; continue with: "
                              f"{resume_command(top)}", stop.signum)
            seconds, compiling = time.perf_counter() - start, str(compiled)
            row, predicted = epoch_row(state, test, partial, epoch, seconds,
                                       config.tta if epoch == n_epochs else None, config)
            first, partial = 0, []
            history.append(row)
            with _writing(top):
                if is_main_process:
                    run.write_metrics(workdir, history, commit=False)
                checkpoint.save(ckpt, epoch, state)  # every process takes part; Orbax writes once
            saved_step = train_state.steps_done(state)
            for step in interrupted.all_steps():  # a signal's checkpoint of this epoch or before
                interrupted.delete(step)
            if is_main_process:  # the epoch is done only now, its checkpoint landed
                run.commit_metrics(workdir)
                last_step = (epoch - 1) * steps_per_epoch + steps_now - 1
                speed = (f"{seconds:.1f}s ({n_images / seconds:,.0f} img/s"
                         + (f", {compiling})" if compiling else ")"))
                entries = row["points"] if config.sweep else [{"point": {}, **row}]
                for entry in entries:
                    lr = entry["point"].get("learning_rate", config.learning_rate)
                    run.log_epoch(tensorboard[sweep.label(entry["point"])], {**entry, "epoch": epoch},
                                  {"images_per_second": n_images / len(entries) / seconds,
                                   "learning_rate": lr * multiplier(last_step)})
                if not config.sweep:
                    figures, final = describe(row)
                    print(f"{desc}  {figures}  {speed}{final}", flush=True)
                else:
                    print(f"{desc}  {speed}", flush=True)
                    width = max(len(sweep.label(entry["point"])) for entry in entries)
                    for entry in entries:
                        figures, final = describe(entry)
                        print(f"  {sweep.label(entry['point']):{width}}  {figures}{final}",
                              flush=True)
                if diverged:
                    print(f"note: diverged (loss above 100 x ln 10, or NaN), training on without "
                          f"them: {'; '.join(members[i] for i in sorted(diverged))}", flush=True)
                    diverged.clear()
    finally:
        # Saves have all been awaited; after a failed one, closing may raise the same error again.
        for mngr in (ckpt, interrupted):
            with contextlib.suppress(Exception):
                mngr.close()
        for writer in tensorboard.values():
            writer.close()
        compiled.close()
    return history, predicted, state, test


@contextlib.contextmanager
def _writing(workdir):
    """A write that fails (no space, say) stops the run with one line and the way back."""
    try:
        yield
    except (checkpoint.CheckpointError, run.RunError) as e:
        raise type(e)(f"{e}; the run stopped there: fix that, then continue with: "
                      f"{resume_command(workdir)}") from None


def parse_args(argv=None):
    """(the parsed flags, {KIND.NAME: text} of the pieces' settings given)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = OneLineParser(
        prog="python -m cifar_jax.train",
        description="Train a CIFAR-10 classifier with JAX (the Keras tutorial's MLP or CNN, the "
                    "airbench94 recipes, or your own model, optimiser, augmentation and loss, "
                    "named as module:attribute), evaluate it on the test set after every epoch, "
                    "and write metrics, TensorBoard events, plots and checkpoints to --workdir. "
                    + SETTINGS_HELP)
    add_config_flags(p)
    p.add_argument("--workdir", help="where the run's files go; must be new or empty unless "
                                     "--resume (default: runs/MODEL-DATE-TIME)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --workdir from its newest readable checkpoint, with "
                        "its saved settings; --epochs may extend a run whose schedules do not "
                        "span it, --learning-rate may change (after a divergence, say); any other "
                        "flag that contradicts them is an error")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar, only one line per epoch")
    if {"-h", "--help"} & set(argv):  # list the settings of the pieces the command line names
        config = help_config(argv)
        if config is not None:
            add_piece_help(p, config)
    argv, settings = split_settings(p, argv)
    args = p.parse_args(argv)
    if args.resume and not args.workdir:
        p.error("--resume needs --workdir: the folder of the run to continue")
    return args, settings


def main(argv=None):
    args, settings = parse_args(argv)
    workdir = args.workdir
    parallel.initialize()
    cache = compilation.enable()
    checkpoint.quiet()
    try:
        overrides = config_overrides(args, settings)
        if args.resume:
            saved = run.resumed_config(workdir)
            given = overrides.pop("settings", {})
            config = dataclasses.replace(saved, **overrides, settings={**saved.settings, **given})
            # a new --learning-rate for a swept one, say
            check_sweep_flags(config.sweep, {**overrides, **given})
        else:
            config = Config.for_model(**overrides)
        workdir = workdir or default_workdir(config)
        print(f"{describe_devices()}; {compilation.describe(cache)}", flush=True)
        with signals.stop_on_signals() as stop:
            history = train_and_evaluate(config, workdir, progress=args.progress,
                                         resume=args.resume, stop=stop)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (data.DataError, checkpoint.CheckpointError, run.RunError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Stopped as e:
        print(e, file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:  # a second signal, or Ctrl-C with no handler (not the main thread)
        print(f"\ninterrupted: every finished epoch is checkpointed in {workdir}; continue with: "
              f"{resume_command(workdir)}", file=sys.stderr)
        return 130
    final = history[-1]
    if "points" in final:
        print(f"done: {sweep.verdict(sweep.final(history))}; the table in "
              f"{workdir}/{sweep.CSV_FILE}, the plot in {sweep.PLOT_FILE}")
    elif "per_seed" in final:  # N models: the spread, and the ensemble's accuracy
        key = "test_accuracy_tta" if "test_accuracy_tta" in final else "test_accuracy"
        low, high = final["test_accuracy_ci95"]
        print(f"done: test accuracy{' with TTA' if key.endswith('tta') else ''} "
              f"{multi_seed.describe(final, key)} (mean ± std of {len(final['per_seed'][key])} "
              f"seeds; 95% confidence interval {low:.4f} to {high:.4f}); their ensemble "
              f"{final['ensemble_test_accuracy']:.4f}; files in {workdir}")
    else:
        print(f"done: test accuracy {final['test_accuracy']:.4f}; files in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
