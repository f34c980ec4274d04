"""Stopping a run cleanly on SIGTERM (what SLURM, Kubernetes and preemptible VMs send before they
kill a job) and SIGINT (Ctrl-C), alike.

While `stop_on_signals()` is active, the first such signal only sets `Stop.signum`; the training
loop looks at it between compiled calls (a twentieth of an epoch), saves that exact step and
exits with 128 + the signal's number. A second signal stops at once (KeyboardInterrupt): the
epochs already checkpointed are kept.
"""

import contextlib
import signal

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stop:
    """Whether, and by which signal, the run has been asked to stop."""

    def __init__(self):
        self.signum = None

    def __bool__(self):
        return self.signum is not None

    @property
    def name(self):
        return signal.Signals(self.signum).name


@contextlib.contextmanager
def stop_on_signals(signals=SIGNALS):
    """Yield a `Stop` that SIGTERM and SIGINT set, and put the previous handlers back after.
    Must run in the main thread (Python delivers signals there only)."""
    stop = Stop()

    def handler(signum, frame):
        if stop:  # asked twice: the user does not want to wait for the step to be saved
            raise KeyboardInterrupt
        stop.signum = signum

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
