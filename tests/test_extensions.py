"""The four extension points from outside the package: a model, optimiser, augmentation and loss
registered by name or named by import path, trained, resumed, evaluated and predicted with; and
each way a piece can be wrong, as one line."""

import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from conftest import FLAGS, MOCK_EXAMPLES, REPO
from PIL import Image
from test_resume import interrupting, rows, snapshot

import cifar_jax
from cifar_jax import evaluate, main, ops, predict, steps, train_state
from cifar_jax.config import Config, ConfigError
from cifar_jax.registry import REGISTRY
from cifar_jax.run import load_state


class Tiny(nn.Module):
    """The issue's five-line model."""

    dtype: object = None

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(10)(nn.relu(nn.Conv(16, (3, 3))(x)).mean((1, 2)))


def test_a_registered_model_trains_like_a_built_in_one(mock_cifar10, tmp_path, capsys):
    cifar_jax.register_model("tiny", Tiny, optimizer="adam", epochs=1)
    config = Config.for_model("tiny", eval_batch_size=32)
    assert (config.optimizer, config.epochs, config.learning_rate) == ("adam", 1, 1e-3)
    assert main.main(["--model", "tiny", "--workdir", str(tmp_path / "run"), "--no-progress",
                       "--eval-batch-size", "32"]) == 0  # a command line parsed in this process
    # importable from this test module, nn.Conv as Flax writes it: nothing to say about it
    assert capsys.readouterr().err == ""
    assert len(rows(tmp_path / "run")) == 1
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["imports"] == {"model": {"tiny": f"{Tiny.__module__}:Tiny"}}
    history = cifar_jax.train_and_evaluate(config, str(tmp_path / "again"), progress=False)
    assert [row["test_accuracy"] for row in history] == [rows(tmp_path / "run")[0]["test_accuracy"]]
    # A process where "tiny" is not registered finds it where config.json says it lives.
    del REGISTRY["model"]["tiny"]
    capsys.readouterr()
    assert evaluate.main(["--workdir", str(tmp_path / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == history[0]["test_accuracy"]
    assert REGISTRY["model"]["tiny"].obj is Tiny


def test_the_issues_script_trains_and_says_what_another_process_needs(tmp_path, capsys):
    script = textwrap.dedent(f'''
        import flax.linen as nn, tensorflow_datasets as tfds
        import cifar_jax
        from cifar_jax import Config

        class Tiny(nn.Module):
            dtype: object = None
            @nn.compact
            def __call__(self, x, train=False):
                return nn.Dense(10)(nn.relu(nn.Conv(16, (3, 3))(x)).mean((1, 2)))

        cifar_jax.register_model("tiny", Tiny, optimizer="adam", epochs=1)
        with tfds.testing.mock_data(num_examples={MOCK_EXAMPLES}):
            cifar_jax.train_and_evaluate(Config.for_model("tiny"), {str(tmp_path / "run")!r},
                                         progress=False)
        ''')
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=False, env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines() == [
        ("note: model 'tiny' is defined in __main__ (a script or a notebook) or inside a "
         "function: this run trains, but --resume, evaluate and predict in another process need "
         "it in a module on PYTHONPATH, registered there or named as module:attribute")]
    assert len(rows(tmp_path / "run")) == 1
    # ... and another process, where "tiny" is not registered (as here), says so: exit 2
    assert "tiny" not in REGISTRY["model"]
    assert evaluate.main(["--workdir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: model 'tiny' of this run was defined in __main__ (a script or a notebook) or "
        "inside a function, which another process cannot import: move it into a module on "
        "PYTHONPATH, and register it there or name it as module:attribute")


def test_import_paths_train_stop_resume_evaluate_and_predict_in_a_fresh_process(
        mypieces, tmp_path, monkeypatch):
    """The four pieces by import path: stopped in epoch 2, resumed in a new process (which
    imports them from config.json alone) equal to the uninterrupted run; evaluate there equal
    to metrics.jsonl, and predict. (Signals themselves: test_resume.)"""
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    argv = [*FLAGS, "--epochs", "2", "--no-progress"]
    with tfds.testing.mock_data(num_examples=300):  # 10 steps an epoch, one per call
        assert main.main([*argv, "--workdir", whole]) == 0
        monkeypatch.setattr(steps, "train_batches_one", interrupting(steps.train_batches_one, 15))
        assert main.main([*argv, "--workdir", cut]) == 130
    assert len(rows(cut)) == 1
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    code = (f"import tensorflow_datasets as tfds; from cifar_jax import evaluate, main, predict\n"
            f"with tfds.testing.mock_data(num_examples=300):\n"
            f"    assert main.main(['--workdir', {cut!r}, '--resume', '--no-progress']) == 0\n"
            f"    assert evaluate.main(['--workdir', {cut!r}, '--json']) == 0\n"
            f"predict.main(['--workdir', {cut!r}, '--json', {str(tmp_path / 'x.png')!r}])")
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=False, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    assert rows(cut) == rows(whole)
    evaluated, predicted = map(json.loads, fresh.stdout.splitlines()[-2:])
    assert evaluated["test_accuracy"] == rows(whole)[-1]["test_accuracy"]
    assert evaluated["test_loss"] == pytest.approx(rows(whole)[-1]["test_loss"], rel=1e-6)
    assert predicted["path"] == str(tmp_path / "x.png")


BROKEN = {
    "wrong_width.py": "import flax.linen as nn\n"
                      "class Net(nn.Module):\n"
                      "    @nn.compact\n"
                      "    def __call__(self, x, train=False):\n"
                      "        return nn.Dense(5)(x.reshape(len(x), -1))\n",
    "no_train.py": "import flax.linen as nn\n"
                   "class Net(nn.Module):\n"
                   "    @nn.compact\n"
                   "    def __call__(self, x):\n"
                   "        return nn.Dense(10)(x.reshape(len(x), -1))\n",
    "listy.py": "import flax.linen as nn\n"
                "class Net(nn.Module):\n"
                "    widths: object = (10,)\n"
                "    @nn.compact\n"
                "    def __call__(self, x, train=False):\n"
                "        return nn.Dense(self.widths[-1])(x.reshape(len(x), -1))\n"
                "def net():\n"
                "    return Net(widths=[16, 10])\n",
    "needs_dep.py": "import nosuchdependency\n",
    "pieces.py": "import jax.numpy as jnp, optax\n"
                 "def not_tx(learning_rate):\n"
                 "    return optax.adam\n"
                 "def sgd(learning_rate):\n"
                 "    return optax.sgd(learning_rate)\n"
                 "sgd.freezes = lambda paths, **_: paths\n"
                 "def to_float(images, key):\n"
                 "    return images / 255.0\n"
                 "def crop(images, key):\n"
                 "    return images[:, 2:-2, 2:-2]\n"
                 "def mean_loss(logits, labels):\n"
                 "    return jnp.mean(logits)\n"
                 "NOT_A_FUNCTION = 3\n",
}

SHAPE, UINT8 = "[B, 32, 32, 3]", "uint8 images [B, 32, 32, 3]"


@pytest.mark.parametrize("flags, message", [
    (["--model", "nosuchmodule:Net"],
     ("model 'nosuchmodule:Net': no module named 'nosuchmodule' (is it on PYTHONPATH, or "
     "installed?)")),
    (["--model", "needs_dep:Net"],
     ("model 'needs_dep:Net': importing needs_dep failed: ModuleNotFoundError: No module named "
     "'nosuchdependency'")),
    (["--model", "wrong_width:Nett"],
     "model 'wrong_width:Nett': module wrong_width has no attribute 'Nett'; expected {model}"),
    (["--model", "pieces:NOT_A_FUNCTION"], "model 'pieces:NOT_A_FUNCTION' is a int; expected {model}"),
    (["--model", "wrong_width:Net"],
     ("model 'wrong_width:Net' returns float32 [2, 5] for 2 images, not logits [2, 10]; "
     "expected {model}")),
    (["--model", "no_train:Net"],
     ("model 'no_train:Net' failed to initialise on images [2, 32, 32, 3]: TypeError: "
     "Net.__call__() got an "
     "unexpected keyword argument 'train'; expected {model}")),
    (["--model", "listy:net"],
     ("model 'listy:net' has an attribute that cannot be hashed (jit keys the compiled steps on "
      "the module): give it a tuple, not a list or a dict; expected {model}")),
    (["--optimizer", "pieces:not_tx", "--learning-rate", "0.1"],
     ("optimizer 'pieces:not_tx' returned a function, not an optax.GradientTransformation; "
     "expected {optimizer}")),
    (["--optimizer", "pieces:sgd", "--learning-rate", "0.1"],
     ("optimizer 'pieces:sgd': its freezes returned a list, not a dict {{parameter path such as "
      "'Conv_0/bias': the first step it is frozen from}}")),
    (["--augment", "flip,pieces:to_float"],
     ("augmentation 'pieces:to_float' returns float32 pixels up to 1 for white uint8 images: "
     "float pixels stay in the 0-255 scale; expected {augmentation}")),
    (["--augment", "pieces:crop"],
     ("augmentation 'pieces:crop' returns uint8 [2, 28, 28, 3] for uint8 images [2, 32, 32, 3]; "
     "expected {augmentation}")),
    (["--loss", "pieces:mean_loss"],
     ("loss 'pieces:mean_loss' returns float32 [] for a batch of 2, not one loss per example [2] "
     "(the step takes their mean or sum); expected {loss}")),
    (["--loss", "pieces:mean_loss", "--label-smoothing", "0.1"],
     ("loss.label_smoothing: loss 'pieces:mean_loss' has no setting 'label_smoothing'; it has no "
      "settings")),
])
def test_a_broken_piece_is_one_line_exit_2_and_nothing_is_written(flags, message, tmp_path,
                                                                   monkeypatch, capsys):
    for name, text in BROKEN.items():
        (tmp_path / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    workdir = tmp_path / "run"
    try:
        code = main.main([*flags, "--workdir", str(workdir), "--no-progress"])
    finally:
        for name in BROKEN:
            sys.modules.pop(name[:-3], None)
    expected = message.format(**cifar_jax.registry.CONTRACTS)
    assert (code, capsys.readouterr().err) == (2, f"error: {expected}\n")
    assert not workdir.exists()


def test_resume_evaluate_and_predict_name_a_piece_that_is_gone(mypieces, mock_cifar10, tmp_path,
                                                               capsys):
    workdir = str(tmp_path / "run")
    assert main.main([*FLAGS, "--epochs", "1", "--workdir", workdir, "--no-progress"]) == 0
    (mypieces / "mypieces.py").unlink()
    sys.modules.pop("mypieces")
    cifar_jax.registry._IMPORTED["model"].pop("mypieces:Tiny")
    capsys.readouterr()
    before = snapshot(workdir)
    gone = "error: model 'mypieces:Tiny': no module named 'mypieces' (is it on PYTHONPATH, or installed?)"
    assert main.main(["--workdir", workdir, "--resume", "--epochs", "2"]) == 2
    assert capsys.readouterr().err.strip() == gone
    assert evaluate.main(["--workdir", workdir]) == 2
    assert capsys.readouterr().err.strip() == gone
    (tmp_path / "x.png").write_bytes(b"")
    assert predict.main(["--workdir", workdir, str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == gone
    assert snapshot(workdir) == before


def test_pieces_get_their_own_settings_and_what_the_run_gives_them(mypieces):
    lion = Config.for_model("cnn", optimizer="mypieces:lion")
    assert (lion.learning_rate, lion.settings) == (3e-4, {})  # lion's own defaults
    lion = Config.for_model("cnn", optimizer="mypieces:lion", settings={"optimizer.b2": 0.95})
    assert train_state.optimizer(lion, 50_000)[0] is train_state.optimizer(lion, 50_000)[0]
    with pytest.raises(ConfigError, match="^optimizer 'optax:lion' has no default learning rate: "
                                          "pass --learning-rate$"):
        Config.for_model("cnn", optimizer="optax:lion")
    assert Config.for_model("cnn", optimizer="optax:lion", learning_rate=1e-4).learning_rate == 1e-4
    seen = {}

    def spy(images, key, run_key, indices, epoch, shift=1):
        seen.update(run_key=run_key, indices=indices, epoch=epoch, shift=shift)
        return images

    cifar_jax.register_augmentation("spy", spy)
    images = jnp.zeros((2, 32, 32, 3), jnp.uint8)
    cifar_jax.augment.apply(images, (("flip", {}), ("spy", {"shift": 5})), jax.random.key(0),
                            jax.random.key(1), indices=jnp.arange(2), epoch=3)
    assert seen["epoch"] == 3 and seen["shift"] == 5
    assert jax.random.key_data(seen["run_key"]).tolist() == jax.random.key_data(
        jax.random.fold_in(jax.random.key(1), 1)).tolist()
    # the model's: its class's attributes, or a build function's keywords and its module's
    assert train_state.build_model(Config.for_model(
        "mypieces:Tiny", settings={"model.width": 4})).width == 4
    airbench = train_state.build_model(Config.for_model("airbench94",
                                                        settings={"model.widths": "8,16,16"}))
    assert (type(airbench).__name__, airbench.widths, airbench.conv) == (
        "AirbenchNet", (8, 16, 16), ops.default_conv(winograd=True))


def test_registering_says_what_is_wrong():
    cifar_jax.register_optimizer("adam", REGISTRY["optimizer"]["adam"].obj)  # the same: fine
    with pytest.raises(ValueError, match=r"^optimizer 'adam' is registered already \(as "
                                         r"cifar_jax.optim.tutorial:adam\): choose another name$"):
        cifar_jax.register_optimizer("adam", optax.adam)
    with pytest.raises(ValueError, match="the name must be a word without ':'"):
        cifar_jax.register_loss("my:loss", lambda logits, labels: logits)
    cifar_jax.register_model("net", Tiny, epoch=3)
    with pytest.raises(ConfigError, match=r"^the recipe of model 'net' sets 'epoch', which is not "
                                          r"a setting of a run"):
        Config.for_model("net")
    with pytest.raises(TypeError, match="expected a pure function"):
        cifar_jax.register_augmentation("gray", "mypieces:gray")


def test_airbench94s_optimiser_is_a_function_of_the_learning_rate_like_any_other():
    nesterov = REGISTRY["optimizer"]["nesterov"].obj
    params = {"whiten": {"kernel": jnp.ones(2), "bias": jnp.ones(2)},
              "norm1": {"bias": jnp.ones(2)}, "conv": {"kernel": jnp.ones(2)}}
    tx = nesterov(11.5, batch_size=1024, steps_per_epoch=48)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert float(updates["whiten"]["kernel"][0]) == 0.0  # the groups: the stem never trains
    # first step, gradient 1, parameter 1: lr_group * (1 + wd / lr_group), wd / lr = 1.3624
    decay = 0.0153 * 1024 / 11.5
    assert float(updates["norm1"]["bias"][0]) / float(updates["conv"]["kernel"][0]) == (
        pytest.approx((64 + decay) / (1 + decay), rel=1e-5))


FREEZING = '''
import jax
import optax


def head_bias(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "head_bias" if jax.tree_util.keystr(path) == "['Dense_0']['bias']"
        else "rest", params)


def sgd_head_bias_for(learning_rate=0.1, bias_epochs=1, *, steps_per_epoch):
    """SGD, the head's bias only for its first `bias_epochs` epochs."""
    steps = bias_epochs * steps_per_epoch
    stop = optax.scale_by_schedule(lambda count: (count < steps).astype("float32"))
    return optax.multi_transform({"head_bias": optax.chain(optax.sgd(learning_rate), stop),
                                  "rest": optax.sgd(learning_rate)}, head_bias)


sgd_head_bias_for.freezes = lambda paths, bias_epochs, steps_per_epoch, **_: {
    path: bias_epochs * steps_per_epoch for path in paths if path == "Dense_0/bias"}
'''


def test_a_users_optimiser_says_what_it_freezes_and_the_steps_stop_its_gradient(
        mypieces, mock_cifar10, tmp_path, monkeypatch):
    (mypieces / "myfreeze.py").write_text(FREEZING)
    frozen, real = [], steps.train_batches_one

    def spy(state, *args, **kwargs):
        frozen.append(state.recipe.frozen)
        return real(state, *args, **kwargs)

    monkeypatch.setattr(steps, "train_batches_one", spy)
    workdir = str(tmp_path / "run")
    assert main.main(["--model", "mypieces:Tiny", "--optimizer", "myfreeze:sgd_head_bias_for",
                      "--optimizer.bias_epochs", "1", "--epochs", "2", "--dtype", "bfloat16",
                      "--eval-batch-size", "32", "--workdir", workdir, "--no-progress"]) == 0
    # 70 mock images at batch 32: 3 steps an epoch, one a call; frozen from step 3
    assert frozen == [()] * 3 + [("Dense_0/bias",)] * 3
    first, second = load_state(workdir, epoch=1)[1], load_state(workdir, epoch=2)[1]
    np.testing.assert_array_equal(first.params["Dense_0"]["bias"],
                                  second.params["Dense_0"]["bias"])
    assert not np.array_equal(first.params["Dense_0"]["kernel"], second.params["Dense_0"]["kernel"])
    assert not np.array_equal(first.params["Dense_0"]["bias"], 0)  # it trained in epoch 1
