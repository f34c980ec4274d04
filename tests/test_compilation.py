"""The persistent compilation cache the command lines turn on, and the tally of what compiled."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax import compilation


@pytest.fixture
def no_cache_dir():
    """The JAX setting as a fresh process without JAX_COMPILATION_CACHE_DIR has it; restored."""
    saved = (jax.config.jax_compilation_cache_dir,
             jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", None)
    yield
    jax.config.update("jax_compilation_cache_dir", saved[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])


def test_on_by_default_in_the_users_cache_dir(no_cache_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(compilation.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compilation.enable() == str(tmp_path / "cifar_jax" / "jax")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cifar_jax" / "jax")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
    assert compilation.describe(str(tmp_path)) == f"compilation cache {tmp_path}"


def test_the_environment_turns_it_off_or_moves_it(no_cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(compilation.ENV, "0")
    assert compilation.enable() is None
    assert jax.config.jax_compilation_cache_dir is None
    assert compilation.describe(None) == "no compilation cache (CIFAR_JAX_COMPILATION_CACHE=0)"
    monkeypatch.setenv(compilation.ENV, str(tmp_path / "here"))
    assert compilation.enable() == str(tmp_path / "here")


def test_a_jax_cache_dir_of_the_users_own_is_kept(tmp_path, monkeypatch):
    monkeypatch.delenv(compilation.ENV, raising=False)
    assert jax.config.jax_compilation_cache_dir  # the tests' own, set by conftest
    assert compilation.enable() == jax.config.jax_compilation_cache_dir


def test_the_tally_counts_programs_and_what_the_cache_served():
    tally = compilation.Tally()
    try:
        f = jax.jit(lambda x: jnp.sin(x) * 41.5)  # a program no other test compiles
        x = np.ones(7, np.float32)  # numpy: no program of its own
        f(x).block_until_ready()
        assert (tally.programs, tally.from_cache) == (1, 0) and tally.seconds > 0
        assert str(tally).startswith("compiling ") and "0 of 1 programs from the cache" in str(tally)
        tally.reset()
        jax.clear_caches()  # as a new process: only the persistent cache has it
        f(x).block_until_ready()
        assert (tally.programs, tally.from_cache) == (1, 1)
        tally.reset()
        assert str(tally) == ""
    finally:
        tally.close()
