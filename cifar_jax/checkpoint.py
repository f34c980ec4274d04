"""Train-state checkpoints, written with Orbax: `WORKDIR/checkpoints/EPOCH` after every epoch,
and `WORKDIR/interrupted/STEP` when a signal stops a run mid-epoch.

Orbax writes each checkpoint into a temporary folder and renames it into place when complete,
so a crash during a save leaves the previous checkpoints as they were. Saves here wait until
the checkpoint has landed: the caller records an epoch as done only then. A checkpoint that
cannot be read is skipped with a warning, and the newest readable one is used.
"""

import asyncio
import contextlib
import json
import logging
import os
import re
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one could not be written; the message says what to do."""


def quiet():
    """Keep Orbax's internals off the terminal: its absl log lines, asyncio's "Task exception
    was never retrieved", and what its abandoned reads leave when one fails: "Exception ignored
    in <coroutine>", and TensorStore's callbacks finding their event loop closed. The errors
    themselves still reach the caller, as CheckpointError. For command-line programs."""
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    if getattr(sys.unraisablehook, "quiet", False):
        return
    default_hook = sys.unraisablehook

    def hook(unraisable):
        loop_closed = (unraisable.exc_type is RuntimeError
                       and str(unraisable.exc_value) == "Event loop is closed")
        if not (asyncio.iscoroutine(unraisable.object) or loop_closed):
            default_hook(unraisable)

    hook.quiet = True
    sys.unraisablehook = hook


@contextlib.contextmanager
def _reads_finished():
    """Orbax runs a restore in a fresh event loop (`asyncio_utils._run_sync_via_new_loop`) and
    closes it once the result is known. When a read of a damaged checkpoint fails, the reads
    beside it are still pending (`asyncio.gather` does not cancel them), and closing the loop
    abandons them: their coroutines, never started, were collected at the interpreter's exit
    with "RuntimeWarning: coroutine '...' was never awaited". While this is active, an event
    loop that is closed first cancels the tasks still pending on it and lets them finish, as
    `asyncio.run` does."""
    policy = asyncio.get_event_loop_policy()
    make = policy.new_event_loop

    def new_event_loop():
        loop = make()
        close = loop.close

        def close_when_done():
            if not loop.is_closed() and not loop.is_running():
                pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            close()

        loop.close = close_when_done
        return loop

    policy.new_event_loop = new_event_loop  # the policy's own method again on the way out
    try:
        yield
    finally:
        del policy.new_event_loop


def manager(workdir, keep_checkpoints=3, read_only=False):
    """An Orbax CheckpointManager keeping the newest `keep_checkpoints` epochs (step = epoch)."""
    return _manager(os.path.join(workdir, "checkpoints"), keep_checkpoints, read_only)


def interrupted_manager(workdir, read_only=False):
    """The manager of the one mid-epoch checkpoint a stopped run leaves (step = train step);
    its folder appears only then."""
    return _manager(os.path.join(workdir, "interrupted"), 1, read_only, create=False)


def _manager(directory, max_to_keep, read_only, create=True):
    return ocp.CheckpointManager(os.path.abspath(directory), options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=create and not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only))  # a save cut short leaves a tmp folder


def save(mngr, step, state, metrics=None):
    """Save `state` (and, for a mid-epoch checkpoint, the epoch's per-step `metrics` so far, a
    list of dicts of numpy arrays) as `step`, replacing a damaged checkpoint of that step, and
    wait until it has landed."""
    args = ocp.args.StandardSave(state)
    if metrics is not None:  # JSON keeps each float32 exactly, so the epoch's sums come out equal
        args = ocp.args.Composite(state=args, metrics=ocp.args.JsonSave(
            [{k: {"dtype": str(v.dtype), "values": v.tolist()} for k, v in chunk.items()}
             for chunk in metrics]))
    try:
        if step in mngr.all_steps():  # one that `restore` skipped as unreadable
            mngr.delete(step)
        mngr.save(step, args=args)
        mngr.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - orbax and TensorStore raise many kinds
        raise CheckpointError(f"cannot write checkpoint {mngr.directory / str(step)}: "
                              f"{describe(e)}") from None


def restore(mngr, like, step=None, with_metrics=False):
    """(state, step) of the newest readable checkpoint, or of `step`'s, shaped like the train
    state `like`; (state, step, metrics) `with_metrics` (a mid-epoch checkpoint).

    An unreadable checkpoint is skipped with a one-line warning on stderr; one asked for by
    `step` is an error instead.
    """
    steps = sorted(mngr.all_steps(), reverse=True)
    if not steps:
        raise CheckpointError(f"no checkpoint in {mngr.directory}: the run has not finished an "
                              "epoch yet")
    if step is not None and step not in steps:
        raise CheckpointError(f"no checkpoint of epoch {step} in {mngr.directory}: choose one of "
                              f"{', '.join(map(str, sorted(steps)))}")
    args = ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, like))
    if with_metrics:
        args = ocp.args.Composite(state=args, metrics=ocp.args.JsonRestore())
    for candidate in [step] if step is not None else steps:
        path = mngr.directory / str(candidate)
        try:
            with _reads_finished():
                restored = mngr.restore(candidate, args=args)
        except Exception as e:  # noqa: BLE001 - orbax raises many kinds on damaged or foreign files
            if step is not None:
                raise CheckpointError(f"checkpoint {path} cannot be read ({describe(e)}): choose "
                                      "another --checkpoint") from None
            print(f"warning: skipped checkpoint {path}: cannot be read ({describe(e)})",
                  file=sys.stderr, flush=True)
            continue
        if not with_metrics:
            return restored, candidate
        metrics = [{k: np.array(v["values"], v["dtype"]) for k, v in chunk.items()}
                   for chunk in restored["metrics"]]
        return restored["state"], candidate, metrics
    raise CheckpointError(f"no checkpoint in {mngr.directory} can be read: start the run again in a "
                          "new --workdir")


# TensorStore's status codes for a file that is there but not what it should be.
_DAMAGED = {"OUT_OF_RANGE": "a file in it is truncated", "DATA_LOSS": "a file in it is damaged",
            "NOT_FOUND": "a file in it is missing", "INVALID_ARGUMENT": "a file in it is damaged"}


def describe(error):
    """A failed read or write's cause in a few words: the operating system's reason where there
    is one ("no space left on device"), else what TensorStore's status code says."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    for e in chain:
        if isinstance(e, OSError) and e.strerror:
            return e.strerror.lower()
        code = re.search(r"os_error_code='?(\d+)", str(e))
        if code:
            return os.strerror(int(code.group(1))).lower()
        if isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)):  # its metadata files
            return _DAMAGED["DATA_LOSS"]
    innermost = str(chain[-1]).strip().splitlines()[0] if str(chain[-1]).strip() else ""
    status = re.match(r"([A-Z_]+): ", innermost)
    if status and status.group(1) in _DAMAGED:
        return _DAMAGED[status.group(1)]
    return f"{type(chain[-1]).__name__}: {innermost[:120]}" if innermost else type(chain[-1]).__name__


class RunCheckpoints:
    """A training run's checkpoints: one per finished epoch, and the one a signal leaves
    mid-epoch. The state is the run's stack of N models; `alone` (one model, no sweep): saved as
    that model itself, the layout such runs have always had."""

    def __init__(self, workdir, keep_checkpoints, alone):
        self.epochs = manager(workdir, keep_checkpoints)
        self.interrupted = interrupted_manager(workdir)
        self.alone = alone

    def _saved(self, state):
        return jax.tree.map(lambda leaf: leaf[0], state) if self.alone else state

    def _loaded(self, state):
        return jax.tree.map(lambda leaf: leaf[None], state) if self.alone else state

    def latest_epoch(self):
        return self.epochs.latest_step()

    def resume(self, state, steps_per_epoch):
        """(state, epochs done, batches done of the next epoch, their per-step metrics) to go on
        from: the newest readable checkpoint, a signal's mid-epoch one or an epoch's; the fresh
        `state` when the run has none yet (it never finished an epoch: same seed, same
        start)."""
        epochs, like = self.epochs.all_steps(), self._saved(state)
        newer = max(epochs, default=0) * steps_per_epoch
        if [step for step in self.interrupted.all_steps() if step > newer]:
            try:
                restored, step, metrics = restore(self.interrupted, like, with_metrics=True)
                epoch, batches = divmod(step, steps_per_epoch)
                return self._loaded(restored), epoch, batches, metrics
            except CheckpointError:
                pass  # warned about; the epochs' checkpoints come next
        if not epochs:
            return state, 0, 0, []
        restored, epoch = restore(self.epochs, like)
        return self._loaded(restored), epoch, 0, []

    def save_epoch(self, epoch, state):
        """Save the state after `epoch`; a signal's checkpoint of this epoch or before goes."""
        save(self.epochs, epoch, self._saved(state))
        for step in self.interrupted.all_steps():
            self.interrupted.delete(step)

    def save_interrupted(self, step, state, metrics):
        """Save the state after train step `step`, mid-epoch, with the epoch's metrics so far."""
        save(self.interrupted, step, self._saved(state), metrics)

    def close(self):
        # Saves have all been awaited; after a failed one, closing may raise the same error again.
        for mngr in (self.epochs, self.interrupted):
            with contextlib.suppress(Exception):
                mngr.close()
