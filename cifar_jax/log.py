"""What a training run tells about each finished epoch: its line on the console, and its
figures as TensorBoard scalars in `RUN/tensorboard/` (a sweep's points each in a folder of
their own, `RUN/tensorboard/POINT`, which TensorBoard overlays as runs)."""

import contextlib
import os
import sys

from cifar_jax import parallel, stack, sweep

# metrics.jsonl key -> TensorBoard tag
TENSORBOARD_TAGS = {"train_loss": "train/loss", "train_accuracy": "train/accuracy",
                    "test_loss": "test/loss", "test_accuracy": "test/accuracy",
                    "images_per_second": "train/images_per_second",
                    "learning_rate": "train/learning_rate"}


class EpochLog:
    """The console and TensorBoard of a run (of a program of a sweep of several: `workdir` is
    the sweep's, and `models.full` names its points) whose next epoch is `first_epoch`. Only
    the main process writes."""

    def __init__(self, workdir, config, models, first_epoch):
        self.main = parallel.is_main_process()
        self.config, self.models = config, models
        self.writers = ({sweep.label(point): tensorboard(workdir, first_epoch,
                                                         sweep.label(models.full(point)))
                         for point in config.points()} if self.main else {})

    def epoch(self, row, desc, seconds, n_images, compiling, multiplier, diverged=()):
        """The epoch's line(s) and scalars: `row` (`stack.epoch_row`), its `seconds`, the
        `n_images` trained, what it compiled, the schedule's `multiplier` of the learning rate
        at its last step, and the models (indices) whose loss `diverged` in it."""
        if not self.main:
            return
        entries = stack.entries(row)
        for entry in entries:
            log_epoch(self.writers[sweep.label(entry["point"])], {**entry, "epoch": row["epoch"]},
                      {"images_per_second": n_images / len(entries) / seconds,
                       "learning_rate": multiplier * entry["point"].get(
                           "learning_rate", self.config.learning_rate)})
        speed = (f"{seconds:.1f}s ({n_images / seconds:,.0f} img/s"
                 + (f", {compiling})" if compiling else ")"))
        if "points" not in row:
            figures, final = stack.figures(row)
            print(f"{desc}  {figures}  {speed}{final}", flush=True)
        else:
            print(f"{desc}  {speed}", flush=True)
            width = max(len(sweep.label(entry["point"])) for entry in entries)
            for entry in entries:
                figures, final = stack.figures(entry)
                print(f"  {sweep.label(entry['point']):{width}}  {figures}{final}", flush=True)
        if diverged:
            print(f"note: diverged (loss above 100 x ln 10, or NaN), training on without them: "
                  f"{'; '.join(self.models.labels[i] for i in sorted(diverged))}", flush=True)

    def close(self):
        for writer in self.writers.values():
            writer.close()


@contextlib.contextmanager
def _import_fails(name):
    """`import name` raises ImportError inside the block, unless that module is loaded already
    (a None entry in `sys.modules` is Python's documented way to make an import fail)."""
    if name in sys.modules:
        yield
        return
    sys.modules[name] = None
    try:
        yield
    finally:
        del sys.modules[name]


def tensorboard(workdir, first_epoch=1, name=""):
    """A TensorBoard writer for `workdir/tensorboard` (a sweep's point's: for
    `workdir/tensorboard/NAME`, so that TensorBoard overlays the points as runs) whose next step
    is `first_epoch`.

    On a resumed run, `purge_step` hides whatever the interrupted run logged from that epoch on
    (an epoch whose checkpoint never landed), so the curves go on without duplicated epochs.
    """
    # Imported here, without torch: tensorboardX tries `import torch` when imported, only to
    # accept torch tensors (we log floats), and where torch is installed that took 3.7 s of the
    # CPU start-up; evaluate and predict write no events and skip its import altogether.
    with _import_fails("torch"):
        from tensorboardX import SummaryWriter
    return SummaryWriter(os.path.join(workdir, "tensorboard", name),
                         purge_step=first_epoch if first_epoch > 1 else None)


def log_epoch(writer, row, scalars):
    """One epoch's scalars: the metrics row's figures plus `scalars` (images/s, learning rate)."""
    for key, value in {**row, **scalars}.items():
        if key in TENSORBOARD_TAGS:
            writer.add_scalar(TENSORBOARD_TAGS[key], value, row["epoch"])
    writer.flush()
