"""The config sits at the bottom: no JAX, validated however it is built, flags generated from it."""

import dataclasses
import json
import subprocess
import sys

import pytest

from cifar_jax.cli import OneLineParser, add_config_flags, config_overrides
from cifar_jax.config import RECIPES, RUNTIME_FIELDS, Config, ConfigError


def test_importing_the_config_starts_no_jax():
    code = "import sys, cifar_jax.config; assert 'jax' not in sys.modules, 'jax was imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("settings, message", [
    ({"model": "resnet"}, "unknown model 'resnet': choose one of mlp, cnn, airbench94"),
    ({"dtype": "float16"}, "unknown dtype 'float16': choose one of float32, bfloat16"),
    ({"batch_size": 2.5}, "batch_size must be an integer, got 2.5"),
    ({"keep_checkpoints": True}, "keep_checkpoints must be an integer, got True"),
    ({"epochs": -1.5}, "epochs must be a positive number, got -1.5"),
    ({"label_smoothing": 1.0}, "label_smoothing must be below 1, got 1.0"),
    ({"weight_decay": -0.1}, "weight_decay must be at least 0.0, got -0.1"),
    ({"augment": "flip,mixup"},
     "unknown augmentation 'mixup': choose from flip, alternating_flip, translate, cutout"),
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
    assert "(default: 10; mlp: 5; airbench94: 9.9)" in flags["epochs"].help
    args = parser.parse_args(["--model", "mlp", "--no-download", "--keep", "2"])
    assert config_overrides(args) == {"model": "mlp", "download": False, "keep_checkpoints": 2}
    config = Config.for_model(**config_overrides(args))
    assert (config.optimizer, config.epochs, config.keep_checkpoints) == ("sgd", 5, 2)
    assert set(RECIPES) == {"mlp", "cnn", "airbench94"}
    assert RUNTIME_FIELDS == ("data_dir", "archive", "download", "keep_checkpoints")


def test_config_json_round_trip_and_runs_saved_before_the_rename(tmp_path):
    config = Config.for_model("mlp", epochs=2)
    assert Config.from_json(config.to_json()) == config
    old = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("keep_checkpoints", "dtype")}
    (tmp_path / "config.json").write_text(json.dumps({**old, "keep": 4}))
    assert Config.load(tmp_path) == dataclasses.replace(config, keep_checkpoints=4)
