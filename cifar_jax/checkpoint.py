"""Train-state checkpoints in `WORKDIR/checkpoints`, written with Orbax after every epoch."""

import os

import jax
import orbax.checkpoint as ocp


def manager(workdir, keep=3):
    """An Orbax CheckpointManager keeping the newest `keep` epochs (step number = epoch)."""
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def save(mngr, epoch, state):
    mngr.save(epoch, args=ocp.args.StandardSave(state))


def restore(mngr, like, epoch=None):
    """The state saved at `epoch` (default: the newest), shaped like the train state `like`."""
    epoch = mngr.latest_step() if epoch is None else epoch
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return mngr.restore(epoch, args=ocp.args.StandardRestore(abstract)), epoch
