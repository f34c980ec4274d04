"""The config sits at the bottom: no JAX, validated however it is built, flags generated from it."""

import dataclasses
import json
import subprocess
import sys

import pytest

from cifar_jax import config
from cifar_jax.cli import OneLineParser, add_config_flags, config_overrides
from cifar_jax.config import REGISTRY, RUNTIME_FIELDS, Config, ConfigError


def test_the_config_module_imports_nothing_of_the_package_nor_jax():
    # config.py alone, outside its package: any import of cifar_jax or jax would show.
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('config', {config.__file__!r}); "
            "spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('jax', 'cifar_jax')], "
            "sorted(sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("settings, message", [
    ({"model": "resnet"}, ("unknown model 'resnet': choose one of mlp, cnn, airbench94, "
                           "airbench94_muon, or name yours as module:attribute")),
    ({"dtype": "float16"}, "unknown dtype 'float16': choose one of float32, bfloat16"),
    ({"batch_size": 2.5}, "batch_size must be an integer, got 2.5"),
    ({"keep_checkpoints": True}, "keep_checkpoints must be an integer, got True"),
    ({"epochs": -1.5}, "epochs must be a positive number, got -1.5"),
    ({"label_smoothing": 1.0}, "label_smoothing must be below 1, got 1.0"),
    ({"weight_decay": -0.1}, "weight_decay must be at least 0.0, got -0.1"),
    ({"augment": "flip,mixup"}, ("unknown augmentation 'mixup': choose one of flip, "
                                "alternating_flip, translate, cutout, or name yours as "
                                "module:attribute")),
    ({"augment": "flip,translate,flip"}, ("augmentation 'flip' is listed twice in augment "
                                         "'flip,translate,flip'")),
    ({"momentum": 0.9}, ("momentum=0.9 is taken by none of the run's pieces (optimizer 'adam', "
                        "loss 'cross_entropy'): drop it, or choose a piece that takes it")),
    ({"reduction": "max"}, "unknown reduction 'max': choose one of mean, sum"),
    ({"tta": 3}, "unknown tta 3: choose one of 0, 1, 2"),
    ({"learning_rate": float("inf")}, "learning_rate must be a positive number, got inf"),
])
def test_a_config_built_directly_is_validated(settings, message):
    with pytest.raises(ConfigError) as error:
        Config(**settings)
    assert str(error.value) == message


def test_learning_rate_defaults_by_optimizer():
    assert Config(optimizer="sgd").learning_rate == 0.01
    assert Config(optimizer="adam").learning_rate == 1e-3
    assert Config(optimizer="sgd", learning_rate=0.5).learning_rate == 0.5


def test_every_field_is_a_flag_with_help_and_the_recipe_decides_defaults():
    parser = OneLineParser(prog="test")
    add_config_flags(parser)
    flags = {a.dest: a for a in parser._actions}
    for field in dataclasses.fields(Config):
        assert field.name in flags and field.metadata["help"] in flags[field.name].help
    assert flags["keep_checkpoints"].option_strings == ["--keep"]
    assert "(default: 10; mlp: 5; airbench94: 9.9; airbench94_muon: 8)" in flags["epochs"].help
    args = parser.parse_args(["--model", "mlp", "--no-download", "--keep", "2"])
    assert config_overrides(args) == {"model": "mlp", "download": False, "keep_checkpoints": 2}
    config = Config.for_model(**config_overrides(args))
    assert (config.optimizer, config.epochs, config.keep_checkpoints) == ("sgd", 5, 2)
    assert list(REGISTRY["model"]) == ["mlp", "cnn", "airbench94", "airbench94_muon"]
    assert RUNTIME_FIELDS == ("data_dir", "archive", "download", "keep_checkpoints")


def test_config_json_round_trip_and_runs_saved_before_the_renames(tmp_path):
    config = Config.for_model("mlp", epochs=2)
    assert Config.from_json(config.to_json()) == config
    # before: "keep", no dtype; "loss" the reduction; every optimiser setting has a value
    old = {k: v for k, v in dataclasses.asdict(config).items()
           if k not in ("keep_checkpoints", "dtype", "reduction")}
    (tmp_path / "config.json").write_text(json.dumps({
        **old, "keep": 4, "loss": "sum", "momentum": 0.85, "weight_decay": 0.0153,
        "bias_scaler": 64.0, "whiten_bias_epochs": 3, "translate_pad": 2, "cutout_size": 8}))
    assert Config.load(tmp_path) == dataclasses.replace(config, keep_checkpoints=4,
                                                        reduction="sum")


def test_the_pieces_own_defaults_fill_what_is_not_set():
    airbench = Config.for_model("airbench94")
    assert (airbench.learning_rate, airbench.momentum, airbench.weight_decay,
            airbench.bias_scaler, airbench.whiten_bias_epochs) == (11.5, 0.85, 0.0153, 64.0, 3)
    assert (airbench.label_smoothing, airbench.translate_pad, airbench.cutout_size) == (0.2, 2, None)
    cnn = Config.for_model("cnn")
    assert (cnn.momentum, cnn.weight_decay, cnn.label_smoothing) == (None, None, 0.0)
    # a recipe's setting goes with the piece an override replaces; an explicit one stays
    assert Config.for_model("airbench94", optimizer="adam").momentum is None
    assert Config.for_model("mlp", momentum=0.9).momentum == 0.9  # sgd takes it
    with pytest.raises(ConfigError, match=r"^cutout_size=4 is taken by none"):
        Config.for_model("airbench94", cutout_size=4)  # no cutout in the recipe
