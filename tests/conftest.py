import fcntl
import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import optax
import pytest
import tensorflow_datasets as tfds
from matplotlib.figure import Figure
from PIL import Image

from cifar_jax import register_model, train_state
from cifar_jax import registry as registries
from cifar_jax.config import Config
from cifar_jax.models.airbench import AirbenchNet
from cifar_jax.registry import REGISTRY
from cifar_jax.train import train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOCK_EXAMPLES = 70  # per split: two full batches of 32 and a partial one of 6
# XLA:CPU spends much of a small program's compile time in LLVM's optimiser, which runs of a few
# steps do not pay back: the tests compile at LLVM's -O1, not -O2 (at -O0 the steps run too
# slowly), and with XLA:CPU's older loop emitters instead of its fusion emitters (a quarter less
# compile time on the mock runs). The same semantics; every comparison a test makes is computed
# under the same flags on both sides, and the tutorial's exact numbers are checked with the
# default flags (../shared/checks/tutorial_numbers.sh). Subprocesses inherit them.
FAST_COMPILE = "--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false"


def pytest_configure(config):
    """One JAX compilation cache for the whole session, new and empty: the xdist workers and
    the subprocesses the tests start inherit it, so a program compiles once per session instead
    of once per process. (The main process sets it before the workers start.)"""
    if not hasattr(config, "workerinput"):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
    if not hasattr(config, "workerinput") and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        cache = tempfile.mkdtemp(prefix="cifar_jax-tests-jax-cache-")
        config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))
        os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        jax.config.update("jax_compilation_cache_dir", cache)  # this process imported jax already
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


@pytest.fixture(autouse=True)
def registries_as_they_were():
    """What a test registers (or imports by path) is gone after it: the registries are global,
    as in a user's process, and the tests share processes."""
    saved = {name: {kind: dict(entries) for kind, entries in getattr(registries, name).items()}
             for name in ("REGISTRY", "_IMPORTED")}
    yield
    for name, kinds in saved.items():
        for kind, entries in kinds.items():
            getattr(registries, name)[kind].clear()
            getattr(registries, name)[kind].update(entries)


# What `figures_unrendered` puts in matplotlib's Figure: no layout, and a blank PNG for a file.
UNRENDERED = {"tight_layout": lambda self, **kwargs: None,
              "savefig": lambda self, path, **kwargs: Image.new("RGB", (1, 1)).save(path, "PNG")}


def figures_unrendered_here():
    """From now on in this process, figures are built by the same code but saved as blank PNGs
    (`figures_unrendered`): for the scripts the tests run as subprocesses."""
    for name, method in UNRENDERED.items():
        setattr(Figure, name, method)


@pytest.fixture(autouse=True)
def figures_unrendered(request, monkeypatch):
    """A run's PNGs take about a second of matplotlib's layout and rasterising, a fifth of a
    mock run: in a test's own runs every figure is built by the same code but saved as a blank
    PNG. The session's runs (`cnn_run`, `lr_sweep`: set up before this fixture), whose plots
    tests open, and tests marked `rendered` draw them for real."""
    if request.node.get_closest_marker("rendered") is None:
        for name, method in UNRENDERED.items():
            monkeypatch.setattr(Figure, name, method)


def narrow_airbench(dtype):
    """The airbench network, narrow, so that a test compiles in seconds."""
    return AirbenchNet(widths=(16, 32, 32), dtype=dtype)


def register_narrow_airbench():
    """The airbench94 recipe with the narrow net as "airbench94_narrow", registered as a user
    would register a model."""
    register_model("airbench94_narrow", narrow_airbench, **REGISTRY["model"]["airbench94"].recipe)


@pytest.fixture
def narrow():
    """airbench94_narrow, registered for one test."""
    register_narrow_airbench()


# A researcher's own module, outside the package: one piece of each kind.
PIECES = '''
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


class Tiny(nn.Module):
    width: int = 8
    dtype: object = None

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(self.width, (3, 3), dtype=self.dtype)(x)
        x = nn.Dropout(0.1, deterministic=not train)(nn.relu(x))
        return nn.Dense(10, dtype=self.dtype)(x.mean((1, 2)))


def lion(learning_rate=3e-4, b1=0.9, b2=0.99, weight_decay=0.0):
    return optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)


def gray(images, key, strength=1.0):
    mean = jnp.broadcast_to(images.mean(-1, keepdims=True), images.shape)
    return (images * (1 - strength) + mean * strength).astype(images.dtype)


def focal(logits, labels, gamma=2.0):
    p = jnp.take_along_axis(jax.nn.softmax(logits), labels[:, None], 1)[:, 0]
    return -((1 - p) ** gamma) * jnp.log(p)
'''

FLAGS = ["--model", "mypieces:Tiny", "--optimizer", "mypieces:lion", "--augment",
         "flip,mypieces:gray", "--loss", "mypieces:focal"]


@pytest.fixture
def mypieces(tmp_path, monkeypatch):
    """`mypieces.py` in a folder of its own on sys.path (and PYTHONPATH, for subprocesses)."""
    folder = tmp_path / "lib"
    folder.mkdir()
    (folder / "mypieces.py").write_text(PIECES)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), REPO]))
    yield folder
    sys.modules.pop("mypieces", None)


@pytest.fixture
def mock_cifar10():
    """tfds.load/builder serve random CIFAR-10-shaped examples: no download, no real data."""
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        yield


def once_per_session(tmp_path_factory, name, produce):
    """(folder, `produce(folder)`'s JSON value), computed once for the whole session and read
    back by the other xdist workers (pytest-xdist's recipe for a session fixture that runs
    once: a lock and a file in the folder the workers share), so that a run which several test
    files read trains once, in whichever worker asks first. `produce` keeps its runs in
    `folder`."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the session's, above each worker's own
    folder, path = shared / name, shared / f"{name}.json"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            path.write_text(json.dumps(produce(str(folder))))
    return str(folder), json.loads(path.read_text())


def cnn_config(**overrides):
    """The session runs' CNN: 2 epochs on the mock data, evaluated in batches of 32."""
    return Config.for_model("cnn", **{"epochs": 2, "eval_batch_size": 32, **overrides})


LR_SWEEP = {"learning_rate": [0.001, 0.002]}  # `lr_sweep`'s


def trained(config, workdir):
    """`config` trained into `workdir` on the mock data: its history."""
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        return train_and_evaluate(config, workdir, progress=False)


@pytest.fixture(scope="session")
def cnn_run(tmp_path_factory):
    """A finished 2-epoch CNN run on mock data: (config, workdir, history)."""
    config = cnn_config()
    folder, history = once_per_session(tmp_path_factory, "cnn",
                                       lambda folder: trained(config, f"{folder}/run"))
    return config, f"{folder}/run", history


@pytest.fixture(scope="session")
def two_seeds(tmp_path_factory):
    """A 2-epoch CNN run of seeds 0 and 1 at once, and seed 1 alone: (config, workdir, history,
    seed 1's workdir). Seed 0 alone is `cnn_run`."""
    config = cnn_config(num_seeds=2)

    def produce(folder):
        trained(cnn_config(seed=1), f"{folder}/seed1")
        return trained(config, f"{folder}/run")

    folder, history = once_per_session(tmp_path_factory, "seeds", produce)
    return config, f"{folder}/run", history, f"{folder}/seed1"


@pytest.fixture
def damaged_run(cnn_run, tmp_path):
    """A copy of `cnn_run` whose newest checkpoint (epoch 2) is damaged: (workdir, its path)."""
    workdir = str(tmp_path / "run")
    shutil.copytree(cnn_run[1], workdir)
    newest = os.path.join(workdir, "checkpoints", "2")
    for root, _, files in os.walk(newest):
        for name in files:
            if name != "_CHECKPOINT_METADATA":
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"garbage")
    return workdir, newest


@pytest.fixture(scope="session")
def lr_sweep(tmp_path_factory, cnn_run):
    """A 2-epoch CNN sweep of learning rates 0.001 (`cnn_run`'s) and 0.002 x seeds 0 and 1, and
    two of its points' own runs, lr 0.001 seed 0 (`cnn_run`) and lr 0.002 seed 1: (config,
    workdir, history, {(lr, seed): workdir})."""
    config = cnn_config(sweep=LR_SWEEP, num_seeds=2)

    def produce(folder):
        trained(cnn_config(learning_rate=0.002, seed=1), f"{folder}/alone")
        return trained(config, f"{folder}/run")

    folder, history = once_per_session(tmp_path_factory, "sweep", produce)
    return config, f"{folder}/run", history, {(0.001, 0): cnn_run[1], (0.002, 1): f"{folder}/alone"}


def swept_and_own_optimiser_steps(config, params, grads):
    """For each point of the sweep `config`: its optimiser's updates at each of `grads`, as the
    sweep computes them (the point's values set in the one optimiser's state) and as the
    point's own run does (`--setting value`), each side applying its updates to its params.
    A list, per point, of ([(sweep's, own) updates per step], (sweep's, own) final params)."""
    tx = train_state.optimizer(config, 50_000)[0]
    out = []
    for point in config.points():
        state = train_state.set_hyperparams(tx.init(params), config,
                                            {k: jnp.float32(v) for k, v in point.items()})
        alone = train_state.optimizer(config.at(point), 50_000)[0]
        alone_state, mine, theirs, updates = alone.init(params), params, params, []
        for g in grads:
            u, state = jax.jit(tx.update)(g, state, mine)
            v, alone_state = jax.jit(alone.update)(g, alone_state, theirs)
            updates.append((u, v))
            mine, theirs = optax.apply_updates(mine, u), optax.apply_updates(theirs, v)
        out.append((updates, (mine, theirs)))
    return out
