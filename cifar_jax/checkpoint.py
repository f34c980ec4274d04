"""Train-state checkpoints in `WORKDIR/checkpoints/EPOCH`, written with Orbax after every epoch.

Orbax writes each checkpoint into a temporary folder and renames it into place when complete,
so a crash during a save leaves the previous checkpoints as they were.
"""

import os

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """No usable checkpoint; the message says what to do."""


def manager(workdir, keep_checkpoints=3):
    """An Orbax CheckpointManager keeping the newest `keep_checkpoints` epochs (step = epoch)."""
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep_checkpoints, create=True))


def save(mngr, epoch, state):
    mngr.save(epoch, args=ocp.args.StandardSave(state))


def restore(mngr, like, epoch=None):
    """(state, epoch) of the newest complete checkpoint, or of `epoch`'s, shaped like the train
    state `like`."""
    epochs = mngr.all_steps()
    if not epochs:
        raise CheckpointError(f"no checkpoint in {mngr.directory}: the run never finished an epoch;"
                              " start it again in a new --workdir")
    if epoch is None:
        epoch = max(epochs)
    elif epoch not in epochs:
        raise CheckpointError(f"no checkpoint of epoch {epoch} in {mngr.directory}: choose one of "
                              f"{', '.join(map(str, sorted(epochs)))}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
        return mngr.restore(epoch, args=ocp.args.StandardRestore(abstract)), epoch
    except Exception as e:  # noqa: BLE001 - orbax raises many kinds on damaged or foreign files
        raise CheckpointError(
            f"checkpoint {mngr.directory / str(epoch)} cannot be read ({type(e).__name__}): "
            "delete that folder to fall back to the one before, or start a new run") from None
