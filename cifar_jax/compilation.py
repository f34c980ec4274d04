"""JAX's persistent compilation cache, on by default for the command lines, and a tally of what
the compiler did: a second run of the same program loads its compiled steps from disk instead of
compiling them again (seconds on a CPU for airbench94's step).

The cache lives in `$XDG_CACHE_HOME/cifar_jax/jax` (else `~/.cache/cifar_jax/jax`);
`CIFAR_JAX_COMPILATION_CACHE=0` turns it off, `CIFAR_JAX_COMPILATION_CACHE=DIR` moves it, and a
`JAX_COMPILATION_CACHE_DIR` of the user's own is left as it is. In a library, call `enable()`.
"""

import os

import jax
from jax import monitoring

ENV = "CIFAR_JAX_COMPILATION_CACHE"
OFF = ("0", "off", "false", "no")


def default_dir():
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                        "cifar_jax", "jax")


def enable():
    """Turn the persistent cache on (unless CIFAR_JAX_COMPILATION_CACHE says not to); returns
    its folder, or None when it is off."""
    setting = os.environ.get(ENV, "")
    if setting.lower() in OFF:
        return None
    if jax.config.jax_compilation_cache_dir:  # the user's own choice (JAX_COMPILATION_CACHE_DIR)
        return jax.config.jax_compilation_cache_dir
    path = setting or default_dir()
    jax.config.update("jax_compilation_cache_dir", path)
    # Every program, not only those over JAX's default second: the small ones add up at start-up.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return path


def describe(path):
    """'compilation cache ~/.cache/cifar_jax/jax' or 'no compilation cache', for a run's first line."""
    if path is None:
        return f"no compilation cache ({ENV}=0)"
    home = os.path.expanduser("~")
    return "compilation cache " + (path.replace(home, "~", 1) if path.startswith(home) else path)


class Tally:
    """What XLA compiles from now on (or since `reset`): programs, seconds, and how many the
    persistent cache served; until `close`."""

    def __init__(self):
        self.reset()
        monitoring.register_event_listener(self._on_event)
        monitoring.register_event_duration_secs_listener(self._on_duration)

    def _on_event(self, event, **_):
        if event == "/jax/compilation_cache/cache_hits":
            self.from_cache += 1

    def _on_duration(self, event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            self.programs += 1
            self.seconds += duration

    def close(self):
        monitoring.unregister_event_listener(self._on_event)
        monitoring.unregister_event_duration_listener(self._on_duration)

    def reset(self):
        self.programs = self.from_cache = 0
        self.seconds = 0.0

    def __str__(self):
        """'compiling 3.1 s, 2 of 5 programs from the cache'; '' when nothing was compiled."""
        if not self.programs:
            return ""
        cached = f", {self.from_cache} of {self.programs} programs from the cache" if (
            jax.config.jax_compilation_cache_dir) else f", {self.programs} programs"
        return f"compiling {self.seconds:.1f} s{cached}"
