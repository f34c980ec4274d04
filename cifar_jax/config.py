"""Every setting of a run: its default, its command-line help, and each model's recipe, once.

This module is the bottom of the package: it imports nothing else of cifar_jax (nor jax), so
any module may read it. The command-line flags of `python -m cifar_jax.train` are generated
from the fields below (`cli.add_config_flags`); a model's recipe is one entry in `RECIPES`.
"""

import dataclasses
import json
import math
import os

# The default learning rate of each optimiser; these names are the optimiser choices. sgd and
# adam: Keras's defaults. nesterov: airbench's, per 1024 examples of the summed loss and
# decoupled from the momentum (`optim.airbench_coefficients` turns it into SGD's 1.46e-3).
LEARNING_RATES = {"sgd": 0.01, "adam": 1e-3, "nesterov": 11.5}

# Each model's recipe: the settings that differ from the field defaults below. A new model is
# one entry here plus its module in `cifar_jax.models`.
RECIPES = {
    "mlp": {"optimizer": "sgd", "epochs": 5},  # the Keras tutorial's MLP
    "cnn": {"optimizer": "adam", "epochs": 10},  # the Keras tutorial's CNN
    # airbench94 (KellerJordan/cifar10-airbench, legacy/airbench94.py): 94% in 3.83 s on an A100
    "airbench94": {"optimizer": "nesterov", "epochs": 9.9, "batch_size": 1024, "drop_last": True,
                   "loss": "sum", "label_smoothing": 0.2, "schedule": "warmup_decay",
                   "lookahead": True, "augment": "alternating_flip,translate", "tta": 2},
}

DTYPES = ("float32", "bfloat16")
AUGMENTATIONS = ("flip", "alternating_flip", "translate", "cutout")  # `augment.AUGMENTATIONS`


class ConfigError(ValueError):
    """A setting is invalid; the message says which and what is allowed."""


def _setting(default, help, *, flag=None, choices=None, positive=False, minimum=None,
             runtime=False):
    """A Config field with what the command line needs to know about it.

    flag: the option's name when it is not `--field-name`; choices: the allowed values;
    positive: must be > 0; minimum: must be >= this; runtime: the results do not depend on it,
    so a resumed run may change it.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "flag": flag, "choices": choices, "positive": positive, "minimum": minimum,
        "runtime": runtime})


@dataclasses.dataclass(frozen=True)
class Config:
    model: str = _setting("cnn", "which network and recipe: 'mlp' (Dense 3000-1000-10, SGD, 5 "
                                 "epochs), 'cnn' (two conv blocks, Adam, 10 epochs), 'airbench94' "
                                 "(the airbench94 recipe: 94%% in seconds on a GPU)",
                          choices=tuple(RECIPES))
    optimizer: str = _setting("adam", "optax optimiser; 'nesterov' is airbench's: Nesterov SGD, "
                                      "coupled weight decay, BatchNorm biases at --bias-scaler "
                                      "x the learning rate, the whitening stem frozen",
                              choices=tuple(LEARNING_RATES))
    learning_rate: float = _setting(None, "learning rate", positive=True)  # None: LEARNING_RATES
    epochs: float = _setting(10, "passes over the 50,000 training images; fractions allowed "
                                 "(the last epoch is cut short, schedules shrink with the run)",
                             positive=True)
    batch_size: int = _setting(32, "training batch size", positive=True)
    drop_last: bool = _setting(False, "drop each epoch's last partial batch (otherwise it is "
                                      "padded and trained on, as Keras does)")
    loss: str = _setting("mean", "the cross-entropy over a batch: its 'mean' or its 'sum' (the "
                                 "learning rate is per example then)", choices=("mean", "sum"))
    label_smoothing: float = _setting(0.0, "label smoothing of the cross-entropy", minimum=0.0)
    schedule: str = _setting("constant", "learning-rate schedule: 'warmup_decay' rises linearly "
                                         "from 0.2x to 1x over the first 23%% of steps, then "
                                         "falls linearly to 0.07x", choices=("constant", "warmup_decay"))
    momentum: float = _setting(0.85, "Nesterov momentum of the 'nesterov' optimiser", positive=True)
    weight_decay: float = _setting(0.0153, "weight decay of the 'nesterov' optimiser, per 1024 "
                                           "examples, decoupled from the learning rate",
                                   minimum=0.0)
    bias_scaler: float = _setting(64.0, "'nesterov': BatchNorm biases learn this many times faster",
                                  positive=True)
    whiten_bias_epochs: float = _setting(3, "'nesterov': epochs the whitening stem's bias trains",
                                         minimum=0)
    lookahead: bool = _setting(False, "lookahead: every 5 steps, move an average of the weights "
                                      "towards them and continue from it (airbench's schedule)")
    augment: str = _setting("", "on-device augmentations, comma-separated: "
                                + ", ".join(AUGMENTATIONS))
    translate_pad: int = _setting(2, "pixels of the 'translate' augmentation (reflect padding)",
                                  minimum=0)
    cutout_size: int = _setting(8, "side of the 'cutout' augmentation's square", positive=True)
    tta: int = _setting(0, "test-time augmentation of the final evaluation: 0 none, 1 mirror, "
                           "2 mirror and 1-pixel translations (6 views)", choices=(0, 1, 2))
    eval_batch_size: int = _setting(1000, "evaluation batch size (the results do not depend on it)",
                                    positive=True)
    dtype: str = _setting("float32", "computation dtype: 'bfloat16' runs activations and matmuls "
                                     "in bfloat16, parameters and optimiser state stay float32",
                          choices=DTYPES)
    seed: int = _setting(0, "seeds the initial weights and the shuffling: same seed, same run")
    num_seeds: int = _setting(1, "train this many models at once, seeds --seed, --seed+1, ..., in "
                                 "one compiled program (vmap), each drawing its weights, data "
                                 "order and augmentation as its own run would; "
                                 "metrics give their mean, std and 95%% confidence interval, "
                                 "predict and evaluate use their ensemble", positive=True)
    data_dir: str | None = _setting(
        None, "TFDS data dir holding a prepared cifar10; CIFAR-10 is downloaded there if missing "
              "(default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)", runtime=True)
    archive: str | None = _setting(
        None, "CIFAR-10's official archive (cifar-10-binary.tar.gz) already on disk: prepare the "
              "data dir from it instead of downloading", runtime=True)
    download: bool = _setting(True, "fail at once, rather than download, when the data dir lacks "
                                    "cifar10", flag="--no-download", runtime=True)
    keep_checkpoints: int = _setting(3, "how many epoch checkpoints to keep", flag="--keep",
                                     positive=True, runtime=True)

    def __post_init__(self):
        if self.learning_rate is None and self.optimizer in LEARNING_RATES:
            object.__setattr__(self, "learning_rate", LEARNING_RATES[self.optimizer])
        for field in dataclasses.fields(self):
            value, meta = getattr(self, field.name), field.metadata
            if meta["choices"] and value not in meta["choices"]:
                raise ConfigError(f"unknown {field.name} {value!r}: choose one of "
                                  f"{', '.join(map(str, meta['choices']))}")
            if field.type in (int, float) and not _number(value, field.type):
                noun = "an integer" if field.type is int else "a number"
                raise ConfigError(f"{field.name} must be {noun}, got {value!r}")
            if meta["positive"] and not 0 < value < math.inf:
                noun = "integer" if field.type is int else "number"
                raise ConfigError(f"{field.name} must be a positive {noun}, got {value!r}")
            if meta["minimum"] is not None and not meta["minimum"] <= value < math.inf:
                raise ConfigError(f"{field.name} must be at least {meta['minimum']}, got {value!r}")
        unknown = [name for name in self.augmentations if name not in AUGMENTATIONS]
        if unknown:
            raise ConfigError(f"unknown augmentation {unknown[0]!r}: choose from "
                              f"{', '.join(AUGMENTATIONS)}")
        if not self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be below 1, got {self.label_smoothing!r}")

    @property
    def augmentations(self):
        """The augment setting as a tuple of names."""
        return tuple(name.strip() for name in self.augment.split(",") if name.strip())

    @property
    def length_tied(self):
        """What of the recipe is laid out over the whole run ("" if nothing): such a run cannot
        be extended once started."""
        return " and ".join(name for name, tied in (
            ("warmup_decay schedule", self.schedule != "constant"), ("lookahead", self.lookahead))
            if tied)

    @classmethod
    def for_model(cls, model="cnn", **overrides):
        """The recipe's settings for `model`; `None` overrides mean "use the default"."""
        if model not in RECIPES:
            raise ConfigError(f"unknown model {model!r}: choose one of {', '.join(RECIPES)}")
        return cls(model=model, **{**RECIPES[model],
                                   **{k: v for k, v in overrides.items() if v is not None}})

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text):
        settings = json.loads(text)
        if "keep" in settings:  # runs written before the field was renamed
            settings["keep_checkpoints"] = settings.pop("keep")
        return cls(**settings)

    @classmethod
    def load(cls, workdir):
        """The Config a run saved as `workdir/config.json`."""
        path = os.path.join(workdir, "config.json")
        if not os.path.isfile(path):
            raise ConfigError(f"{workdir} holds no cifar_jax run (no config.json)")
        try:
            with open(path) as f:
                return cls.from_json(f.read())
        except (ValueError, TypeError) as e:  # ConfigError is a ValueError too
            raise ConfigError(f"{path} is damaged ({e})") from None


def _number(value, kind):
    """`value` is an int (or, for float fields, also a float); bools are not numbers."""
    return not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else int)


# Settings a resumed run may change: the results do not depend on them.
RUNTIME_FIELDS = tuple(f.name for f in dataclasses.fields(Config) if f.metadata["runtime"])


def default_text(name):
    """How `--help` states a field's default: its value, then the recipes that differ
    ("10; mlp: 5, airbench94: 9.9"), or None where the help text says it all."""
    if name == "learning_rate":
        return "; ".join(f"{optimizer}: {lr}" for optimizer, lr in LEARNING_RATES.items())
    base = next(f.default for f in dataclasses.fields(Config) if f.name == name)
    others = {model: recipe[name] for model, recipe in RECIPES.items()
              if recipe.get(name, base) != base}
    if isinstance(base, bool):  # a switch
        return f"off; on for {', '.join(others)}" if others and not base else None
    if base is None:
        return None
    show = lambda value: "none" if value == "" else str(value)
    return "; ".join([show(base), *(f"{model}: {show(v)}" for model, v in others.items())])
