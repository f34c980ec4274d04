"""A run's folder: creating it, `config.json`, `metrics.jsonl`, TensorBoard events, and reading a
trained state back.

    RUN/config.json        every setting (`Config`)
    RUN/metrics.jsonl      one JSON row per finished epoch
    RUN/tensorboard/       the same figures as TensorBoard scalars, one step per epoch
    RUN/checkpoints/EPOCH  the train state (`checkpoint.py`)
"""

import dataclasses
import json
import os

import jax
from tensorboardX import SummaryWriter

from cifar_jax import checkpoint, parallel, state
from cifar_jax.config import RUNTIME_FIELDS, Config, ConfigError

# metrics.jsonl key -> TensorBoard tag
TENSORBOARD_TAGS = {"train_loss": "train/loss", "train_accuracy": "train/accuracy",
                    "test_loss": "test/loss", "test_accuracy": "test/accuracy",
                    "images_per_second": "train/images_per_second",
                    "learning_rate": "train/learning_rate"}


class RunError(RuntimeError):
    """A run folder cannot be used; the message says why and what to do."""


def resumed_config(workdir):
    """The settings of the run in `workdir`, which --resume continues."""
    try:
        return Config.load(workdir)
    except ConfigError as e:
        raise ConfigError(f"nothing to resume: {e}; start the run without --resume") from None


def create(config, workdir, is_main_process=True):
    """Make `workdir` a new run holding config.json (written by the main process only).

    Refuses a non-empty folder, so nothing is overwritten. Returns whether the folder itself was
    created, for `discard`.
    """
    if os.path.isdir(workdir) and os.listdir(workdir):
        raise ConfigError(f"workdir {workdir} is not empty: choose a new --workdir, or pass "
                          "--resume to continue the run in it (nothing in it was changed)")
    existed = os.path.isdir(workdir)
    parallel.sync("workdir checked")  # by every process, before the main one fills it
    if is_main_process:
        try:
            os.makedirs(workdir, exist_ok=True)
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write(config.to_json() + "\n")
        except OSError as e:
            raise ConfigError(f"cannot write to workdir {workdir} ({e.strerror}): "
                              "choose another --workdir") from None
    return not existed


def check_resumable(config, workdir):
    """`workdir` holds a run made with `config` (but for the settings a resume may change)."""
    saved = resumed_config(workdir)
    different = [f.name for f in dataclasses.fields(Config) if f.name not in RUNTIME_FIELDS
                 and getattr(saved, f.name) != getattr(config, f.name)]
    if different:
        k = different[0]
        raise ConfigError(f"{workdir} was run with {k}={getattr(saved, k)!r}, not "
                          f"{getattr(config, k)!r}: drop that flag to resume the run as it was")


def discard(workdir, created):
    """Undo `create` (a run that could not start), so that the same command can be rerun."""
    os.remove(os.path.join(workdir, "config.json"))
    if created:
        os.rmdir(workdir)


def read_metrics(workdir, last_epoch=None):
    """The rows of `workdir/metrics.jsonl`, up to `last_epoch` if given."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [row for row in rows if last_epoch is None or row["epoch"] <= last_epoch]


def write_metrics(workdir, rows):
    """Replace metrics.jsonl atomically, so a crash leaves either the old file or the new one."""
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(path + ".tmp", path)


def tensorboard(workdir, first_epoch=1):
    """A TensorBoard writer for `workdir/tensorboard` whose next step is `first_epoch`.

    On a resumed run, `purge_step` hides whatever the interrupted run logged from that epoch on
    (an epoch whose checkpoint never landed), so the curves go on without duplicated epochs.
    """
    return SummaryWriter(os.path.join(workdir, "tensorboard"),
                         purge_step=first_epoch if first_epoch > 1 else None)


def log_epoch(writer, row, scalars):
    """One epoch's scalars: the metrics row's figures plus `scalars` (images/s, learning rate)."""
    for key, value in {**row, **scalars}.items():
        if key in TENSORBOARD_TAGS:
            writer.add_scalar(TENSORBOARD_TAGS[key], value, row["epoch"])
    writer.flush()


def load_state(workdir, epoch=None):
    """(config, train state, epoch) of a run's newest checkpoint, or of `epoch`'s."""
    try:
        config = Config.load(workdir)
    except ConfigError as e:
        raise RunError(f"{e}: pass the --workdir of a `python -m cifar_jax.train` run") from None
    like = state.from_config(config, jax.random.key(0))
    try:
        restored, epoch = checkpoint.restore(checkpoint.manager(workdir, config.keep_checkpoints),
                                             like, epoch)
    except checkpoint.CheckpointError as e:
        raise RunError(str(e)) from None
    return config, restored, epoch
