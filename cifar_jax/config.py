"""Every setting of a run, with the tutorial's defaults per model."""

import dataclasses
import json
import os

from cifar_jax.steps import OPTIMIZERS

MODEL_DEFAULTS = {  # the Keras tutorial's recipe for each model
    "mlp": {"optimizer": "sgd", "epochs": 5},
    "cnn": {"optimizer": "adam", "epochs": 10},
}
LEARNING_RATES = {"sgd": 0.01, "adam": 1e-3}  # Keras's defaults for each optimiser


# Settings a resumed run may change: the results do not depend on them.
RUNTIME_FIELDS = ("data_dir", "download", "keep")


class ConfigError(ValueError):
    """A setting is invalid; the message says which and what is allowed."""


@dataclasses.dataclass(frozen=True)
class Config:
    model: str = "cnn"
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int = 1000
    seed: int = 0
    data_dir: str | None = None
    download: bool = True
    keep: int = 3  # checkpoints kept

    @classmethod
    def for_model(cls, model="cnn", **overrides):
        """The tutorial's settings for `model`; `None` overrides mean "use the default"."""
        if model not in MODEL_DEFAULTS:
            raise ConfigError(f"unknown model {model!r}: choose one of {', '.join(MODEL_DEFAULTS)}")
        settings = {**MODEL_DEFAULTS[model], **{k: v for k, v in overrides.items() if v is not None}}
        settings.setdefault("learning_rate", LEARNING_RATES.get(settings["optimizer"]))
        return cls(model=model, **settings).validated()

    def validated(self):
        if self.model not in MODEL_DEFAULTS:
            raise ConfigError(f"unknown model {self.model!r}: choose one of {', '.join(MODEL_DEFAULTS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}: "
                              f"choose one of {', '.join(OPTIMIZERS)}")
        for name in ("epochs", "batch_size", "eval_batch_size", "keep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < float("inf")):
            raise ConfigError(f"learning_rate must be a positive number, got {self.learning_rate!r}")
        return self

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text):
        return cls(**json.loads(text)).validated()

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
