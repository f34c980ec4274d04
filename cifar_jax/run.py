"""A run's folder: creating it, `config.json`, `metrics.jsonl`, TensorBoard events, and reading a
trained state back.

    RUN/config.json        every setting (`Config`)
    RUN/metrics.jsonl      one JSON row per finished epoch
    RUN/tensorboard/       the same figures as TensorBoard scalars, one step per epoch
    RUN/checkpoints/EPOCH  the train state (`checkpoint.py`)
    RUN/interrupted/STEP   the train state of a run a signal stopped mid-epoch
    RUN/.lock              names the process training the run
    RUN/programs/K/        of a sweep of several compiled programs: each, a run folder of its
                           own (its metrics, checkpoints; RUN's config, metrics and reports
                           are the whole sweep's)
"""

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import socket

import jax

from cifar_jax import checkpoint, contracts, parallel, sweep, train_state
from cifar_jax.config import RUNTIME_FIELDS, Config, ConfigError, ExtensionError
from cifar_jax.registry import show

LOCK_FILE = ".lock"  # held by the process training the run (`lock`)


class RunError(RuntimeError):
    """A run folder cannot be used; the message says why and what to do."""


def resume_command(workdir):
    """The command that continues the run in `workdir`."""
    return f"python -m cifar_jax.train --workdir {workdir} --resume"


def resumed_config(workdir):
    """The settings of the run in `workdir`, which --resume continues."""
    try:
        return Config.load(workdir)
    except ExtensionError:
        raise
    except ConfigError as e:
        raise ConfigError(f"nothing to resume: {e}; start the run without --resume") from None


def check_new(workdir):
    """`workdir` may take a new run: it is missing or empty (but for a lock a killed run left).
    A run another process is making there is named."""
    if os.path.isdir(workdir) and set(os.listdir(workdir)) - {LOCK_FILE}:
        holder = in_use_by(workdir)
        if holder:
            raise _in_use(workdir, holder)
        raise ConfigError(f"workdir {workdir} is not empty: choose a new --workdir, or pass "
                          "--resume to continue the run in it (nothing in it was changed)")


def create(config, workdir, is_main_process=True):
    """Make `workdir` a new run holding config.json (written by the main process only).

    Refuses a non-empty folder, so nothing is overwritten. The main process calls it holding
    the run's `lock`.
    """
    check_new(workdir)
    parallel.sync("workdir checked")  # by every process, before the main one fills it
    if is_main_process:
        write_config(config, workdir)


def write_config(config, workdir):
    """Write (or, for a resume with a new learning rate or more epochs, replace) config.json."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json() + "\n")
    except OSError as e:
        raise _unwritable(workdir, e) from None


@contextlib.contextmanager
def lock(workdir):
    """Hold the run in `workdir` (created if need be) for as long as the block runs: another
    process that tries is refused with a line naming this one. The lock is the operating
    system's (flock), so it goes with the process however it ends: a killed run leaves nothing
    that blocks --resume."""
    try:
        os.makedirs(workdir, exist_ok=True)
        f = open(os.path.join(workdir, LOCK_FILE), "a+")  # noqa: SIM115 - the `with` below
    except OSError as e:
        raise _unwritable(workdir, e) from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise _in_use(workdir, f.read().strip() or "another process") from None
        f.truncate(0)
        f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        yield


def in_use_by(workdir):
    """'process PID on HOST' holding the run in `workdir` (`lock`), or None if none does."""
    try:
        f = open(os.path.join(workdir, LOCK_FILE))  # noqa: SIM115 - the `with` below
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released as `f` closes
        except BlockingIOError:
            return f.read().strip() or "another process"
    return None


def _unwritable(workdir, error):
    return ConfigError(f"cannot write to workdir {workdir} ({error.strerror}): choose another "
                       "--workdir")


def _in_use(workdir, holder):
    return RunError(f"{workdir} is in use by {holder}: wait until it ends, or choose another "
                    "--workdir")


def check_resumable(config, workdir):
    """`workdir` holds a run made with `config`, but for the settings a resume may change: the
    runtime ones, the learning rate (the run goes on with the new one, as after a divergence),
    and more epochs where the recipe's schedules do not span the run."""
    saved = resumed_config(workdir)
    different = [f.name for f in dataclasses.fields(Config)
                 if f.name not in (*RUNTIME_FIELDS, "learning_rate", "epochs", "settings")
                 and getattr(saved, f.name) != getattr(config, f.name)]
    if different:
        k = different[0]
        raise ConfigError(f"{workdir} was run with {k}={getattr(saved, k)!r}, not "
                          f"{getattr(config, k)!r}: drop that flag to resume the run as it was")
    for k in sorted(set(saved.settings) | set(config.settings)):
        if saved.settings.get(k) != config.settings.get(k):
            was, now = (show(s.settings[k]) if k in s.settings else "its default"
                        for s in (saved, config))
            raise ConfigError(f"{workdir} was run with {k} {was}, not {now}: drop that flag to "
                              "resume the run as it was")
    if config.epochs != saved.epochs:
        why = None
        if config.epochs < saved.epochs:
            why = "a run cannot be shortened"
        elif saved.epochs != int(saved.epochs):
            why = f"it ends part-way through epoch {math.ceil(saved.epochs)}"
        elif saved.length_tied:
            why = f"its {saved.length_tied} span{'s' if ' and ' not in saved.length_tied else ''} the whole run"
        if why:
            raise ConfigError(f"cannot take {workdir} from {saved.epochs:g} to {config.epochs:g} "
                              f"epochs: {why}; drop --epochs to resume it as it was, or start a "
                              f"new run with --epochs {config.epochs:g}")


def discard(workdir, created):
    """Undo `create` (a run that could not start), so that the same command can be rerun;
    `created`: the folder was made for the run (by `lock`), so it goes too."""
    os.remove(os.path.join(workdir, "config.json"))
    if created:
        os.remove(os.path.join(workdir, LOCK_FILE))
        os.rmdir(workdir)


def read_metrics(workdir, last_epoch=None):
    """The rows of `workdir/metrics.jsonl`, up to `last_epoch` if given ([] before the first);
    a sweep's points with their tuples as tuples again (JSON wrote them as lists)."""
    if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        return []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for row in rows:
        for entry in row.get("points", ()):
            entry["point"] = {name: tuple(value) if isinstance(value, list) else value
                              for name, value in entry["point"].items()}
    return [row for row in rows if last_epoch is None or row["epoch"] <= last_epoch]


def write_metrics(workdir, rows, commit=True):
    """Replace metrics.jsonl atomically, so a crash leaves either the old file or the new one.

    With `commit=False` only the new file is written, beside the old one; `commit_metrics` puts
    it in place once the epoch's checkpoint has landed. That is a rename, which needs no space:
    on a full disk metrics.jsonl never lists an epoch whose checkpoint failed.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    try:
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    except OSError as e:
        raise RunError(f"cannot write {path}: {e.strerror.lower()}") from None
    if commit:
        commit_metrics(workdir)


def commit_metrics(workdir):
    """Put the metrics.jsonl that `write_metrics(..., commit=False)` wrote in place."""
    path = os.path.join(workdir, "metrics.jsonl")
    os.replace(path + ".tmp", path)


def chosen_point(workdir, point=None):
    """(the run's config, the point of its sweep that `point` ({setting: value or text}, from
    --point) names, by default its best point (`sweep.select`); None without a sweep)."""
    try:
        config = Config.load(workdir)
    except ExtensionError:
        raise  # a piece of the run cannot be imported again: a usage error, named as such
    except ConfigError as e:
        raise RunError(f"{e}: pass the --workdir of a `python -m cifar_jax.train` run") from None
    rows = sweep.named(config, read_metrics(workdir))
    try:
        chosen = sweep.select(config, point, sweep.final(rows) if rows and "points" in rows[-1]
                              else None)
    except ConfigError as e:
        raise RunError(str(e)) from None
    return config, config.points()[chosen] if config.sweep else None


def _program_of(workdir, point):
    """(folder, config) of the program of a sweep of several that trains `point`."""
    root = os.path.join(workdir, sweep.PROGRAMS_DIR)
    for name in sorted(os.listdir(root), key=lambda name: (len(name), name)):
        folder = os.path.join(root, name)
        if os.path.isfile(os.path.join(folder, "config.json")):
            program = Config.load(folder)
            if all(sweep.same(program.value(setting), value) for setting, value in point.items()
                   if setting not in dict(program.sweep)):
                return folder, program
    raise RunError(f"the point {sweep.label(point)} of the sweep in {workdir} has not started "
                   f"training: continue the sweep with python -m cifar_jax.train --workdir "
                   f"{workdir} --resume")


def load_state(workdir, epoch=None, member=None, point=None):
    """(config, train state, epoch) of a run's newest checkpoint, or of `epoch`'s; of a
    multi-seed run, its stacked state, or model `member`'s (0-based) alone. Of a sweep, the
    models of the point that `point` ({setting: value}) names, by default of its best point
    (`sweep.select`), and `member` among them; of a sweep of several programs, those of the
    program that trained the point (its config)."""
    config, chosen = chosen_point(workdir, point)
    if os.path.isdir(os.path.join(workdir, sweep.PROGRAMS_DIR)):
        folder, program = _program_of(workdir, chosen)
        return load_state(folder, epoch, member, {name: chosen[name] for name, _ in program.sweep})
    contracts.check(config)
    n_seeds = config.num_seeds
    if member is not None and not 0 <= member < n_seeds:
        raise RunError(f"--member {member} is not in the run: it trained {n_seeds} "
                       f"model{'s' if n_seeds > 1 else ''} (seeds {config.seed} to "
                       f"{config.seed + n_seeds - 1})"
                       + (" at each point" if config.sweep else "")
                       + f"; choose 0 to {n_seeds - 1}")
    chosen = config.points().index(chosen) if config.sweep else 0
    key = jax.random.key(0)
    like = train_state.from_config(config, jax.random.split(key, config.members)
                                   if config.members > 1 else key)
    try:
        restored, epoch = checkpoint.restore(
            checkpoint.manager(workdir, config.keep_checkpoints, read_only=True), like, epoch)
    except checkpoint.CheckpointError as e:
        raise RunError(str(e)) from None
    if config.members > 1:
        first = chosen * n_seeds
        part = slice(first + member, first + member + 1) if member is not None else \
            slice(first, first + n_seeds)
        restored = jax.tree.map(lambda leaf: leaf[part], restored)
        if part.stop - part.start == 1:  # one model: a plain state
            restored = train_state.member(restored, 0)
    return config, restored, epoch
