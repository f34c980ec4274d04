"""The config sits at the bottom (with the registry under it): no JAX, validated however it is
built, flags generated from it, config.json of earlier versions read."""

import dataclasses
import json
import subprocess
import sys

import pytest

from cifar_jax import registry
from cifar_jax.cli import OneLineParser, add_config_flags, config_overrides
from cifar_jax.config import RUNTIME_FIELDS, Config, ConfigError
from cifar_jax.registry import REGISTRY


def test_the_registry_imports_nothing_of_the_package_nor_jax():
    # registry.py alone, outside its package: any import of cifar_jax or jax would show. (The
    # config imports it alone: test_the_config_imports_only_the_registry.)
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('registry', {registry.__file__!r}); "
            "spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('jax', 'cifar_jax')], "
            "sorted(sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_importing_the_package_and_its_config_loads_no_jax_until_the_registry_is_read():
    code = ("import sys; import cifar_jax, cifar_jax.config; "
            "assert 'jax' not in sys.modules, 'jax'; "
            "from cifar_jax.registry import REGISTRY; assert 'cnn' in REGISTRY['model']; "
            "assert 'jax' in sys.modules")  # the built-in recipes' models are Flax modules
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_the_config_imports_only_the_registry():
    with open(Config.__module__.replace(".", "/") + ".py") as f:
        imports = [line for line in f if line.startswith(("import cifar_jax", "from cifar_jax"))]
    assert imports == ["from cifar_jax.registry import (\n"]


@pytest.mark.parametrize("settings, message", [
    ({"model": "resnet"}, ("unknown model 'resnet': choose one of mlp, cnn, airbench94, "
                           "airbench94_muon, cifar10_speedrun, or name yours as "
                           "module:attribute")),
    ({"dtype": "float16"}, "unknown dtype 'float16': choose one of float32, bfloat16"),
    ({"batch_size": 2.5}, "batch_size must be an integer, got 2.5"),
    ({"keep_checkpoints": True}, "keep_checkpoints must be an integer, got True"),
    ({"epochs": -1.5}, "epochs must be a positive number, got -1.5"),
    ({"settings": {"loss.label_smoothing": "high"}},
     "loss.label_smoothing must be a number, got 'high'"),
    ({"settings": {"label_smoothing": 0.1}},
     "settings: 'label_smoothing' is not a piece's setting KIND.NAME (write loss.label_smoothing)"),
    ({"augment": "flip,mixup"}, ("unknown augmentation 'mixup': choose one of flip, "
                                "alternating_flip, translate, cutout, colour_jitter, or name "
                                "yours as module:attribute")),
    ({"augment": "flip,translate,flip"}, ("augmentation 'flip' is listed twice in augment "
                                         "'flip,translate,flip'")),
    ({"settings": {"optimizer.momentum": 0.9}}, ("optimizer.momentum: optimizer 'adam' has no "
                                                  "setting 'momentum'; it has no settings")),
    ({"optimizer": "sgd", "settings": {"optimizer.learning_rate": 0.9}}, (
        "optimizer.learning_rate: optimizer 'sgd' has no setting 'learning_rate'; the learning "
        "rate is the run's: --learning-rate")),
    ({"augment": "flip", "settings": {"augment.translate.pad": 4}}, (
        "augment.translate.pad: 'translate' is not among the run's augmentations (flip): add it "
        "to --augment, or drop the setting")),
    ({"reduction": "max"}, "unknown reduction 'max': choose one of mean, sum"),
    ({"tta": 4}, "unknown tta 4: choose one of 0, 1, 2, 3"),
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
        if field.name != "settings":  # the pieces' own: --KIND.NAME (test_cli)
            assert field.name in flags and field.metadata["help"] in flags[field.name].help
    assert flags["keep_checkpoints"].option_strings == ["--keep"]
    assert ("(default: 10; mlp: 5; airbench94: 9.9; airbench94_muon: 8; cifar10_speedrun: 7.59)"
            in flags["epochs"].help)
    assert flags["momentum"].help == "short for --optimizer.momentum"
    args = parser.parse_args(["--model", "mlp", "--no-download", "--keep", "2",
                              "--momentum", "0.9"])
    assert config_overrides(args) == {"model": "mlp", "download": False, "keep_checkpoints": 2,
                                      "settings": {"optimizer.momentum": "0.9"}}
    config = Config.for_model(**config_overrides(args))
    assert (config.optimizer, config.epochs, config.keep_checkpoints) == ("sgd", 5, 2)
    assert config.settings == {"optimizer.momentum": 0.9}
    assert list(REGISTRY["model"]) == ["mlp", "cnn", "airbench94", "airbench94_muon",
                                       "cifar10_speedrun"]
    assert RUNTIME_FIELDS == ("data_dir", "archive", "download", "keep_checkpoints")


def test_config_json_round_trip_and_runs_saved_before_the_renames(tmp_path):
    config = Config.for_model("mlp", epochs=2, settings={"model.hidden": [100, 50]})
    assert config.settings == {"model.hidden": (100, 50)}
    assert Config.from_json(config.to_json()) == config
    # before: "keep", no dtype; "loss" the reduction; every optimiser setting a field
    old = {k: v for k, v in dataclasses.asdict(config).items()
           if k not in ("keep_checkpoints", "dtype", "reduction", "settings")}
    (tmp_path / "config.json").write_text(json.dumps({
        **old, "keep": 4, "loss": "sum", "momentum": 0.85, "weight_decay": 0.0153,
        "bias_scaler": 64.0, "whiten_bias_epochs": 3, "translate_pad": 2, "cutout_size": 8}))
    assert Config.load(tmp_path) == dataclasses.replace(config, keep_checkpoints=4,
                                                        reduction="sum", settings={})


def test_a_config_json_of_the_version_before_pieces_had_settings():
    """Until pieces had their own settings, Config held them as fields, each given to every
    piece that named it (and the built-in translate's and cutout's as translate_pad and
    cutout_size)."""
    before = {"model": "airbench94", "optimizer": "nesterov", "learning_rate": 11.5, "epochs": 2,
              "batch_size": 1024, "drop_last": True, "loss": "cross_entropy", "reduction": "sum",
              "label_smoothing": 0.2, "schedule": "warmup_decay", "momentum": 0.85,
              "weight_decay": 0.0153, "bias_scaler": 64.0, "whiten_bias_epochs": 3,
              "bias_lr": None, "head_lr": None, "lookahead": True,
              "augment": "alternating_flip,translate,cutout", "translate_pad": 2, "cutout_size": 8,
              "tta": 2, "eval_batch_size": 1000, "dtype": "float32", "seed": 0, "num_seeds": 2,
              "sweep": [["learning_rate", [8.0, 11.5]], ["bias_scaler", [32.0, 64.0]]],
              "data_dir": None, "archive": None, "download": True, "keep_checkpoints": 3}
    config = Config.from_json(json.dumps(before))
    assert config.settings == {
        "augment.cutout.size": 8, "augment.translate.pad": 2, "loss.label_smoothing": 0.2,
        "optimizer.momentum": 0.85, "optimizer.weight_decay": 0.0153,
        "optimizer.whiten_bias_epochs": 3.0}
    assert config.sweep == (("learning_rate", (8.0, 11.5)), ("optimizer.bias_scaler", (32.0, 64.0)))


def test_the_recipe_gives_its_pieces_settings_and_they_go_with_their_piece():
    airbench = Config.for_model("airbench94")
    assert airbench.settings == {"loss.label_smoothing": 0.2}
    assert (airbench.learning_rate, airbench.augment) == (11.5, "alternating_flip,translate")
    assert Config.for_model("cnn").settings == {}
    # a recipe's setting goes with the piece an override replaces; an explicit one stays
    registry.register_loss("hinge", lambda logits, labels, margin=1.0: logits.sum(-1) * margin)
    assert Config.for_model("airbench94", loss="hinge").settings == {}
    assert Config.for_model("airbench94", loss="cross_entropy").settings == {
        "loss.label_smoothing": 0.2}
    assert Config.for_model("mlp", settings={"optimizer.momentum": 0.9}).settings == {
        "optimizer.momentum": 0.9}  # sgd takes it
    assert Config.for_model("airbench94", augment="flip").settings == {"loss.label_smoothing": 0.2}
    assert Config.for_model("airbench94", augment="translate", settings={
        "augment.translate.pad": "3"}).settings == {"augment.translate.pad": 3,
                                                    "loss.label_smoothing": 0.2}
    with pytest.raises(ConfigError, match=r"^augment.cutout.size: 'cutout' is not among the run's "
                                          r"augmentations \(alternating_flip, translate\)"):
        Config.for_model("airbench94", settings={"augment.cutout.size": 4})
    with pytest.raises(ConfigError, match=r"^'momentum' is not a setting of the run: a piece's "
                                          r"setting goes in "
                                          r"settings=\{'optimizer.momentum': ...\}"):
        Config.for_model("mlp", momentum=0.9)


@pytest.mark.parametrize("name, text, value", [
    ("model.features", "64,128", (64, 128)),
    ("model.features", "(16,)", (16,)),
    ("model.dense", "32", 32),
    ("loss.label_smoothing", "1", 1.0),
])
def test_a_settings_text_is_parsed_to_its_type(name, text, value):
    config = Config.for_model("cnn", settings={name: text})
    assert config.settings[name] == value and type(config.settings[name]) is type(value)


@pytest.mark.parametrize("name, value, message", [
    ("model.dense", "1.5", "model.dense must be an integer, got '1.5'"),
    ("model.dense", 1.5, "model.dense must be an integer, got 1.5"),
    ("model.features", "64,x", "model.features must be an integer, got 'x'"),
    ("model.features", 64, "model.features must be comma-separated integers, got 64"),
    ("loss.label_smoothing", "abc", "loss.label_smoothing must be a number, got 'abc'"),
    ("model.nosuch", 1, ("model.nosuch: model 'cnn' has no setting 'nosuch'; its settings are "
                         "features, dense, num_classes")),
    ("model.dtype", "float32", ("model.dtype: model 'cnn' has no setting 'dtype'; the run gives "
                                "it dtype itself")),
    ("loss.x.y", 1, "loss.x.y: 'x.y' is not a setting's name (KIND.NAME, e.g. optimizer.b2, "
                    "model.width, augment.translate.pad)"),
])
def test_a_bad_setting_is_one_line(name, value, message):
    with pytest.raises(ConfigError) as error:
        Config.for_model("cnn", settings={name: value})
    assert str(error.value) == message


def test_types_come_from_the_default_or_the_annotation():
    from typing import Optional

    def opt(learning_rate, *, a=1, b: float = 1, c: Optional[int] = None, d="x", e: bool = False,
            f: "tuple[float, ...]" = (), g=None, h=print, i=(1, "a")):
        return learning_rate

    found = registry.settings_of("optimizer", opt)
    assert {name: (s.type, s.item) for name, s in found.items()} == {
        "a": (int, None), "b": (float, None), "c": (int, None), "d": (str, None),
        "e": (bool, None), "f": (tuple, float), "g": (None, None), "i": (tuple, None)}
    assert [registry.parse(found["f"], "1,2.5"), registry.parse(found["e"], "true"),
            registry.parse(found["g"], "0.5"), registry.parse(found["g"], "adamw"),
            registry.parse(found["c"], "none")] == [(1.0, 2.5), True, 0.5, "adamw", None]
