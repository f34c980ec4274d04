"""Every setting of a run, its default and its command-line help, once; and the names the
settings may take: the models (with their recipes), optimisers, augmentations and losses.

This module is the bottom of the package: it imports nothing else of cifar_jax (nor jax), so
any module may read it. The command-line flags of `python -m cifar_jax.train` are generated
from the fields below (`cli.add_config_flags`).

The four extension points are open from outside the package. A model, optimiser,
augmentation or loss is named either by a registered name (`register_model` and its three
siblings, which cifar_jax's own recipes in `cifar_jax/recipes/` call too) or by an import path
`module:attribute`, imported on first use. Their contracts are `CONTRACTS` below; the pieces
are checked against them before a run starts (`cifar_jax.contracts`).
"""

import dataclasses
import importlib
import inspect
import itertools
import json
import math
import os
from typing import Any, NamedTuple

# --------------------------------------------------------------------------------------------
# The registries
# --------------------------------------------------------------------------------------------

# What each kind of piece must be; --help, the README and the error messages say it so.
CONTRACTS = {
    "model": "a Flax module class, or a function returning a module (given dtype= where it "
             "takes one), applied as apply(variables, images, train=...) to float images in "
             "[0, 1] of shape [B, 32, 32, 3] and returning logits [B, 10]",
    "optimizer": "a function of the learning rate (a number; the run's schedule scales its "
                 "updates) returning an optax.GradientTransformation",
    "augmentation": "a pure function (images, key) of uint8 images [B, 32, 32, 3] and a PRNG "
                    "key, returning uint8 images of the same shape",
    "loss": "a function (logits [B, 10], labels int [B]) returning the per-example losses [B]",
}

class ConfigError(ValueError):
    """A setting is invalid; the message says which and what is allowed."""


class ExtensionError(ConfigError):
    """A model, optimiser, augmentation or loss cannot be found, imported or used as its
    contract says; the message names it and what was expected."""


class Entry(NamedTuple):
    """A registered piece: the object, a model's recipe (the settings that differ from the
    defaults), and where it lives as `module:qualname` (None where no import can reach it)."""

    obj: Any
    recipe: dict
    path: str | None


REGISTRY = {kind: {} for kind in CONTRACTS}
_IMPORTED = {kind: {} for kind in CONTRACTS}  # import paths resolved so far


def register_model(name, build, **recipe):
    """Make the model `build` (CONTRACTS["model"]) available as `name`, with its recipe: any
    Config settings, e.g. optimizer="adam", epochs=30, batch_size=512. A module may define
    `init_from_data(self, variables, images)`, called once on a fresh state with the uint8
    training images (airbench94's whitening stem)."""
    unknown = sorted(set(recipe) - (set(FIELDS) - {"model"}))
    if unknown:
        raise TypeError(f"register_model({name!r}, ...): {unknown[0]!r} is not a setting "
                        "(a recipe takes Config's fields, e.g. optimizer, epochs, batch_size)")
    _register("model", name, build, recipe)


def register_optimizer(name, fn):
    """Make the optimiser `fn` (CONTRACTS["optimizer"]) available as `name`. It is called as
    `fn(learning_rate, **settings)` with the settings its signature names (momentum,
    weight_decay, batch_size, ..., total_steps, steps_per_epoch); its learning_rate's default
    is the run's default."""
    _register("optimizer", name, fn)


def register_augmentation(name, fn):
    """Make the augmentation `fn` (CONTRACTS["augmentation"]) available as `name`. It runs
    inside the compiled step as `fn(images, **arguments)`, given those its signature names:
    `key` (this batch's), `run_key` (the same all run), `indices` (the images' positions in
    the training set), `epoch` (0-based), or a setting (e.g. translate_pad)."""
    _register("augmentation", name, fn)


def register_loss(name, fn):
    """Make the per-example loss `fn` (CONTRACTS["loss"]) available as `name`. It is called as
    `fn(logits, labels, **settings)` with the settings its signature names (label_smoothing);
    the step masks padded examples and takes the mean or the sum (--reduction)."""
    _register("loss", name, fn)


def _register(kind, name, obj, recipe=None):
    if not isinstance(name, str) or not name or set(name) & set(":, "):
        raise ValueError(f"register_{kind}: the name must be a word without ':', ',' or spaces "
                         f"(those are for import paths and lists), got {name!r}")
    if not callable(obj):
        raise TypeError(f"register_{kind}({name!r}, ...): expected {CONTRACTS[kind]}, got a "
                        f"{type(obj).__name__}")
    path, old = import_path(obj), REGISTRY[kind].get(name)
    if old is not None and (old.path != path or path is None) and old.obj is not obj:
        raise ValueError(f"{kind} {name!r} is registered already (as {old.path}): choose "
                         "another name")
    REGISTRY[kind][name] = Entry(obj, dict(recipe or {}), path)


def import_path(obj):
    """'module:qualname' of a function or class, or None where it is not reachable so (a
    lambda, a function defined inside another, a partial)."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        return None
    return f"{module}:{qualname}"


def lookup(kind, name):
    """The Entry registered as `name`, or the object at the import path `name`
    ('module:attribute', imported once). ExtensionError says what is wrong otherwise."""
    if name in REGISTRY[kind]:
        return REGISTRY[kind][name]
    if ":" not in name:
        raise ExtensionError(f"unknown {kind} {name!r}: choose one of "
                             f"{', '.join(REGISTRY[kind])}, or name yours as module:attribute")
    if name not in _IMPORTED[kind]:
        _IMPORTED[kind][name] = Entry(_import(kind, name), {}, name)
    return _IMPORTED[kind][name]


def _import(kind, path):
    """The object at `path` ('module:attribute', the module on the Python path)."""
    module_name, _, attribute = path.partition(":")
    expected = f"expected {CONTRACTS[kind]}"
    if not module_name or not attribute:
        raise ExtensionError(f"{kind} {path!r} is not an import path module:attribute; {expected}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ExtensionError(f"{kind} {path!r}: no module named {e.name!r} (is it on "
                                 "PYTHONPATH, or installed?)") from None
        raise ExtensionError(f"{kind} {path!r}: importing {module_name} failed: {_one_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - whatever the module's own code raises
        raise ExtensionError(f"{kind} {path!r}: importing {module_name} failed: {_one_line(e)}") from None
    obj = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ExtensionError(f"{kind} {path!r}: module {module_name} has no attribute "
                                 f"{attribute!r}; {expected}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ExtensionError(f"{kind} {path!r} is a {type(obj).__name__}; {expected}")
    return obj


def _one_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def parameters(fn):
    """`fn`'s parameters by name (a class: its constructor's); {} where Python cannot tell."""
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return {}


def call(fn, *args, **available):
    """`fn(*args, **those of `available` that its signature names)`."""
    names = parameters(fn)
    return fn(*args, **{k: v for k, v in available.items() if k in names})


def default_of(fn, name):
    """The default of `fn`'s parameter `name`, or None (no such parameter, or no default)."""
    parameter = parameters(fn).get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    return parameter.default


# --------------------------------------------------------------------------------------------
# The settings
# --------------------------------------------------------------------------------------------


def _setting(default, help, *, flag=None, choices=None, positive=False, minimum=None,
             runtime=False, piece=False, sweepable=False):
    """A Config field with what the command line needs to know about it.

    flag: the option's name when it is not `--field-name`; choices: the allowed values;
    positive: must be > 0; minimum: must be >= this; runtime: the results do not depend on it,
    so a resumed run may change it; piece: a hyperparameter of the pieces that name it (the
    optimiser, the loss, the augmentations): None means the piece's own default, and a value
    that no piece takes is an error; sweepable: a number the compiled step reads as a value
    (not a shape, not code), so that one program can train several of its values (--sweep).
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "flag": flag, "choices": choices, "positive": positive, "minimum": minimum,
        "runtime": runtime, "piece": piece, "sweepable": sweepable})


@dataclasses.dataclass(frozen=True)
class Config:
    model: str = _setting("cnn", "which network and its recipe: 'mlp' (Dense 3000-1000-10, SGD, "
                                 "5 epochs), 'cnn' (two conv blocks, Adam, 10 epochs), "
                                 "'airbench94' (94%% in seconds on a GPU), any registered name, "
                                 "or module:attribute naming " + CONTRACTS["model"])
    optimizer: str = _setting("adam", "the optimiser: sgd, adam, nesterov (airbench's Nesterov "
                                      "SGD with its parameter groups), a registered name, or "
                                      "module:attribute naming " + CONTRACTS["optimizer"])
    learning_rate: float = _setting(None, "learning rate, in the optimiser's units", positive=True,
                                    sweepable=True)
    epochs: float = _setting(10, "passes over the 50,000 training images; fractions allowed "
                                 "(the last epoch is cut short, schedules shrink with the run)",
                             positive=True)
    batch_size: int = _setting(32, "training batch size", positive=True)
    drop_last: bool = _setting(False, "drop each epoch's last partial batch (otherwise it is "
                                      "padded and trained on, as Keras does)")
    loss: str = _setting("cross_entropy", "the per-example training loss: cross_entropy, a "
                                          "registered name, or module:attribute naming "
                         + CONTRACTS["loss"])
    reduction: str = _setting("mean", "how a batch's per-example losses make the loss that is "
                                      "differentiated: their 'mean' or their 'sum' (the learning "
                                      "rate is per example then)", choices=("mean", "sum"))
    label_smoothing: float = _setting(None, "label smoothing, for a loss that takes it",
                                      minimum=0.0, piece=True, sweepable=True)
    schedule: str = _setting("constant", "learning-rate schedule: 'warmup_decay' rises linearly "
                                         "from 0.2x to 1x over the first 23%% of steps, then "
                                         "falls linearly to 0.07x",
                             choices=("constant", "warmup_decay"))
    momentum: float = _setting(None, "momentum, for an optimiser that takes it", positive=True,
                               piece=True, sweepable=True)
    weight_decay: float = _setting(None, "weight decay, for an optimiser that takes it "
                                         "(nesterov's: per 1024 examples, decoupled from the "
                                         "learning rate; muon's: per example, of its SGD "
                                         "groups)", minimum=0.0, piece=True,
                                  sweepable=True)
    bias_scaler: float = _setting(None, "nesterov: BatchNorm biases learn this many times faster",
                                  positive=True, piece=True, sweepable=True)
    whiten_bias_epochs: float = _setting(None, "nesterov, muon: epochs the whitening stem's "
                                               "bias trains", minimum=0, piece=True)
    bias_lr: float = _setting(None, "muon: learning rate of the biases (the stem's, BatchNorm's, "
                                    "a Dense or Conv layer's), by SGD", positive=True,
                              piece=True, sweepable=True)
    head_lr: float = _setting(None, "muon: learning rate of the other parameters that are not "
                                    "4-D kernels (airbench's head, a CNN's Dense kernels), by "
                                    "SGD", positive=True, piece=True, sweepable=True)
    lookahead: bool = _setting(False, "lookahead: every 5 steps, move an average of the weights "
                                      "towards them and continue from it (airbench's schedule)")
    augment: str = _setting("", "on-device augmentations, comma-separated, applied in that "
                                "order: flip, alternating_flip, translate, cutout, registered "
                                "names, or module:attribute, each " + CONTRACTS["augmentation"])
    translate_pad: int = _setting(None, "pixels of the 'translate' augmentation (reflect padding)",
                                  minimum=0, piece=True)
    cutout_size: int = _setting(None, "side of the 'cutout' augmentation's square", positive=True,
                                piece=True)
    tta: int = _setting(0, "test-time augmentation of the final evaluation: 0 none, 1 mirror, "
                           "2 mirror and 1-pixel translations (6 views)", choices=(0, 1, 2))
    eval_batch_size: int = _setting(1000, "evaluation batch size (the results do not depend on it)",
                                    positive=True)
    dtype: str = _setting("float32", "computation dtype: 'bfloat16' runs activations and matmuls "
                                     "in bfloat16, parameters and optimiser state stay float32",
                          choices=("float32", "bfloat16"))
    seed: int = _setting(0, "seeds the initial weights and the shuffling: same seed, same run")
    num_seeds: int = _setting(1, "train this many models at once, seeds --seed, --seed+1, ..., in "
                                 "one compiled program (vmap), each drawing its weights, data "
                                 "order and augmentation as its own run would; "
                                 "metrics give their mean, std and 95%% confidence interval, "
                                 "predict and evaluate use their ensemble", positive=True)
    sweep: tuple = _setting((), "train several values of a setting at once, NAME=V1,V2,...; "
                                "repeat the flag for a grid of two or more settings. Every "
                                "point (x --num-seeds seeds) trains in one compiled program, "
                                "each as its own run with that value would. Sweepable: "
                                "learning_rate, momentum, weight_decay, label_smoothing, "
                                "bias_scaler, bias_lr, head_lr. Writes sweep.csv, sweep.png and "
                                "one TensorBoard run per point", flag="--sweep")
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
        for field in dataclasses.fields(self):
            value, meta = getattr(self, field.name), field.metadata
            if meta["choices"] and value not in meta["choices"]:
                raise ConfigError(f"unknown {field.name} {value!r}: choose one of "
                                  f"{', '.join(map(str, meta['choices']))}")
        lookup("model", self.model)
        pieces = _pieces(self.optimizer, self.loss, self.augment)
        object.__setattr__(self, "sweep", _sweep(self.sweep))
        if self.learning_rate is None and "learning_rate" not in dict(self.sweep):
            default = default_of(pieces[0][1], "learning_rate")
            if default is None:
                raise ConfigError(f"optimizer {self.optimizer!r} has no default learning rate: "
                                  "pass --learning-rate")
            object.__setattr__(self, "learning_rate", default)
        for name in PIECE_SETTINGS:  # None: the default of the first piece that takes it
            if getattr(self, name) is None and name not in dict(self.sweep):  # swept: None
                object.__setattr__(self, name, next(
                    (default_of(fn, name) for _, fn in pieces if name in parameters(fn)), None))
        for field in dataclasses.fields(self):
            if getattr(self, field.name) is not None and field.type in (int, float):
                _check_number(field, getattr(self, field.name))
        for name in PIECE_SETTINGS:
            if getattr(self, name) is not None and not _takers(name, pieces):
                raise ConfigError(f"{name}={getattr(self, name)!r} is taken by none of the run's "
                                  f"pieces ({_named(pieces)}): drop it, or choose a piece that "
                                  "takes it")
        for name, _ in self.sweep:
            if name in PIECE_SETTINGS and not _takers(name, pieces):
                raise ConfigError(f"--sweep {name}: {name} is taken by none of the run's pieces "
                                  f"({_named(pieces)}): choose a piece that takes it")

    def points(self):
        """The sweep's points in grid order (the last --sweep varies fastest), each a dict
        {setting: value}; [{}], one point of no swept setting, without a sweep."""
        names = [name for name, _ in self.sweep]
        return [dict(zip(names, values))
                for values in itertools.product(*(values for _, values in self.sweep))]

    @property
    def members(self):
        """The models the run trains at once: each point's --num-seeds seeds, point by point."""
        return len(self.points()) * self.num_seeds

    def member_seeds(self):
        """The seed of each member: --seed, --seed+1, ... within each point."""
        return [self.seed + i for _ in self.points() for i in range(self.num_seeds)]

    @property
    def augmentations(self):
        """The augment setting as a tuple of names."""
        return _augmentations(self.augment)

    @property
    def length_tied(self):
        """What of the recipe is laid out over the whole run ("" if nothing): such a run cannot
        be extended once started."""
        return " and ".join(name for name, tied in (
            ("warmup_decay schedule", self.schedule != "constant"), ("lookahead", self.lookahead))
            if tied)

    @classmethod
    def for_model(cls, model="cnn", **overrides):
        """The recipe's settings for `model`; `None` overrides mean "use the default". A
        recipe's setting for a piece that `overrides` replace (its label smoothing, with
        another loss) goes with that piece."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        check_sweep_flags(overrides.get("sweep", ()), overrides)
        settings = {**lookup("model", model).recipe, **overrides}
        pieces = _pieces_of(settings)
        return cls(model=model, **{k: v for k, v in settings.items()
                                   if k in overrides or k not in PIECE_SETTINGS
                                   or _takers(k, pieces)})

    def to_json(self):
        """config.json: every setting, and where each of the run's registered pieces that are
        not cifar_jax's own lives ("imports"), so that another process can import them."""
        settings = dataclasses.asdict(self)
        imports = {}
        for kind, name in self.pieces():
            entry = REGISTRY[kind].get(name)
            if entry is not None and not (entry.path or "").startswith("cifar_jax."):
                imports.setdefault(kind, {})[name] = entry.path
        return json.dumps({**settings, **({"imports": imports} if imports else {})}, indent=2)

    def pieces(self):
        """(kind, name) of each piece the run names: model, optimiser, loss, augmentations."""
        return [("model", self.model), ("optimizer", self.optimizer), ("loss", self.loss),
                *(("augmentation", name) for name in self.augmentations)]

    @classmethod
    def from_json(cls, text):
        settings = json.loads(text)
        if "keep" in settings:  # runs written before the field was renamed
            settings["keep_checkpoints"] = settings.pop("keep")
        if settings.get("loss") in ("mean", "sum"):  # before the loss became a piece, when
            settings["reduction"] = settings.pop("loss")  # these were nesterov's alone
            if settings.get("optimizer") != "nesterov":
                for name in ("momentum", "weight_decay", "bias_scaler", "whiten_bias_epochs"):
                    settings.pop(name, None)
        for kind, names in settings.pop("imports", {}).items():
            for name, path in names.items():
                _reimport(kind, name, path)
        # A setting none of the run's pieces takes was a default then (runs before pieces).
        pieces = _pieces_of(settings)
        return cls(**{k: v for k, v in settings.items()
                      if k not in PIECE_SETTINGS or _takers(k, pieces)})

    @classmethod
    def load(cls, workdir):
        """The Config a run saved as `workdir/config.json`."""
        path = os.path.join(workdir, "config.json")
        if not os.path.isfile(path):
            raise ConfigError(f"{workdir} holds no cifar_jax run (no config.json)")
        try:
            with open(path) as f:
                return cls.from_json(f.read())
        except ExtensionError:
            raise
        except (ValueError, TypeError, AttributeError) as e:  # ConfigError is a ValueError too
            raise ConfigError(f"{path} is damaged ({e})") from None


def _check_number(field, value):
    """`value` is a number `field` may take, or ConfigError says what it must be."""
    meta, name = field.metadata, field.name
    if not _number(value, field.type):
        raise ConfigError(f"{name} must be {'an integer' if field.type is int else 'a number'}, "
                          f"got {value!r}")
    if meta["positive"] and not 0 < value < math.inf:
        noun = "integer" if field.type is int else "number"
        raise ConfigError(f"{name} must be a positive {noun}, got {value!r}")
    if meta["minimum"] is not None and not meta["minimum"] <= value < math.inf:
        raise ConfigError(f"{name} must be at least {meta['minimum']}, got {value!r}")
    if name == "label_smoothing" and not value < 1:
        raise ConfigError(f"label_smoothing must be below 1, got {value!r}")


def _sweep(spec):
    """A sweep given as {name: values}, or (name, values) pairs (config.json's lists too), as
    ((name, (value, ...)), ...), each value checked as its flag checks it: ConfigError says
    what is wrong with the first bad part."""
    pairs = list(spec.items()) if isinstance(spec, dict) else [tuple(pair) for pair in spec]
    seen, normal = set(), []
    for name, values in pairs:
        field = FIELDS.get(name)
        if field is None:
            raise ConfigError(f"--sweep {name}: no such setting; sweepable are "
                              f"{', '.join(SWEEPABLE)}")
        if name in ("seed", "num_seeds"):
            raise ConfigError(f"--sweep {name}: seeds are not swept: --num-seeds N trains seeds "
                              "--seed to --seed+N-1 at every point")
        if not field.metadata["sweepable"]:
            raise ConfigError(f"--sweep {name}: {name} changes the compiled program, which one "
                              "sweep cannot vary: train separate runs, one per value; sweepable "
                              f"are {', '.join(SWEEPABLE)}")
        if name in seen:
            raise ConfigError(f"--sweep {name} is given twice: list all its values in one "
                              f"--sweep {name}=V1,V2,...")
        seen.add(name)
        values = tuple(values)
        if not values:
            raise ConfigError(f"--sweep {name} has no values: give them as {name}=V1,V2,...")
        for i, value in enumerate(values):
            try:
                _check_number(field, value)
            except ConfigError as e:
                raise ConfigError(f"--sweep {name}: {e}") from None
            if value in values[:i]:
                raise ConfigError(f"--sweep {name} lists {value!r} twice: give each value once")
        normal.append((name, tuple(float(value) for value in values)))
    return tuple(normal)


def check_sweep_flags(sweep, given):
    """A setting is not both swept and set: ConfigError names the first such one. `given`:
    the settings the command line (or the caller) set, by name."""
    for name, _ in _sweep(sweep):
        if given.get(name) is not None:
            flag = FIELDS[name].metadata["flag"] or "--" + name.replace("_", "-")
            raise ConfigError(f"--sweep {name} and {flag} both set {name}: drop one")


def _named(pieces):
    return ", ".join(f"{kind} {piece!r}" for (kind, piece), _ in pieces)


def _augmentations(augment):
    return tuple(name.strip() for name in augment.split(",") if name.strip())


def _pieces(optimizer, loss, augment):
    """((kind, name), object) of the optimiser, the loss and each augmentation, in that order:
    where a setting's default comes from. Unknown or unimportable names are ExtensionErrors."""
    names = _augmentations(augment)
    repeated = [name for i, name in enumerate(names) if name in names[:i]]
    if repeated:
        raise ConfigError(f"augmentation {repeated[0]!r} is listed twice in augment {augment!r}")
    return [((kind, name), lookup(kind, name).obj)
            for kind, name in (("optimizer", optimizer), ("loss", loss),
                               *(("augmentation", name) for name in names))]


def _pieces_of(settings):
    """`_pieces` of a dict of settings, the defaults standing in for those it lacks."""
    return _pieces(*(settings.get(name, FIELDS[name].default)
                     for name in ("optimizer", "loss", "augment")))


def _takers(setting, pieces):
    return [piece for piece, fn in pieces if setting in parameters(fn)]


def _reimport(kind, name, path):
    """Register `name` again from `path`, as config.json recorded it, unless it is registered
    already (importing its module may register it itself)."""
    if name in REGISTRY[kind]:
        return
    if path is None or path.startswith("__main__:"):
        raise ExtensionError(f"{kind} {name!r} of this run was defined in __main__ (a script or a "
                             "notebook) or inside a function, which another process cannot "
                             "import: move it into a module on PYTHONPATH, and register it there "
                             "or name it as module:attribute")
    obj = _import(kind, path)
    if name not in REGISTRY[kind]:
        _register(kind, name, obj)


def _number(value, kind):
    """`value` is an int (or, for float fields, also a float); bools are not numbers."""
    return not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else int)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# Settings a resumed run may change: the results do not depend on them.
RUNTIME_FIELDS = tuple(f.name for f in dataclasses.fields(Config) if f.metadata["runtime"])
# The pieces' hyperparameters: None means the piece's own default.
PIECE_SETTINGS = tuple(f.name for f in dataclasses.fields(Config) if f.metadata["piece"])
# The settings --sweep may vary.
SWEEPABLE = tuple(f.name for f in dataclasses.fields(Config) if f.metadata["sweepable"])


def default_text(name):
    """How `--help` states a field's default: its value, then the recipes that differ
    ("10; mlp: 5, airbench94: 9.9"), or None where the help text says it all."""
    base = FIELDS[name].default
    others = {model: entry.recipe[name] for model, entry in REGISTRY["model"].items()
              if entry.recipe.get(name, base) != base}
    show = lambda value: "none" if value == "" else str(value)
    if name == "learning_rate" or name in PIECE_SETTINGS:  # the pieces' own defaults
        owners = [(piece, default_of(entry.obj, name))
                  for kind in ("optimizer", "loss", "augmentation")
                  for piece, entry in REGISTRY[kind].items() if name in parameters(entry.obj)]
        return "; ".join([*(f"{piece}: {value}" for piece, value in owners if value is not None),
                          *(f"{model}: {show(v)}" for model, v in others.items())]) or None
    if isinstance(base, bool):  # a switch
        return f"off; on for {', '.join(others)}" if others and not base else None
    if base is None or base == ():
        return None
    return "; ".join([show(base), *(f"{model}: {show(v)}" for model, v in others.items())])
