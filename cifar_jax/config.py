"""Every setting of a run, its default and its command-line help, once, and their validation.

A run's own settings are `Config`'s fields (the model, the optimiser, the epochs, the batch
size, ...); each piece's settings are in `Config.settings`, by KIND.NAME, as the command line
spells them: a model's attributes (`model.width`), an optimiser's keyword arguments
(`optimizer.b2`), a loss's (`loss.label_smoothing`), an augmentation's
(`augment.translate.pad`, the augmentation named as --augment lists it, or by its last name).
`--sweep` may vary any of them; `Config.points` is its grid.

This module and the registry below it (`cifar_jax.registry`: the pieces, their names and
settings) are the bottom of the package: they import nothing else of cifar_jax, nor JAX. The
flags of `python -m cifar_jax.train` are generated from the fields below (`cli`).
"""

import contextlib
import dataclasses
import itertools
import json
import math
import os

from cifar_jax.registry import (
    CONTRACTS,
    REGISTRY,
    REQUIRED,
    RUN_ARGUMENTS,
    ConfigError,
    ExtensionError,
    Setting,
    check,
    lookup,
    parameters,
    reimport,
    settings_of,
    show,
)

__all__ = ["ALIASES", "CONTRACTS", "FIELDS", "PREFIXES", "RUNTIME_FIELDS", "Config", "ConfigError",
           "ExtensionError", "check_sweep_flags", "default_text"]

# The pieces' settings are KIND.NAME; KIND is one of these (with the registry's name for it).
PREFIXES = {"model": "model", "optimizer": "optimizer", "loss": "loss", "augment": "augmentation"}
# Short names of the settings researchers set most: the same settings by another name
# (--momentum is --optimizer.momentum, --sweep weight_decay=... sweeps optimizer.weight_decay).
ALIASES = {"momentum": "optimizer.momentum", "weight_decay": "optimizer.weight_decay",
           "label_smoothing": "loss.label_smoothing"}


def _setting(default, help, *, flag=None, choices=None, positive=False, minimum=None,
             runtime=False, sweep=True):
    """A Config field with what the command line needs to know about it.

    flag: the option's name when it is not `--field-name` ("" for none); choices: the allowed
    values; positive: must be > 0; minimum: must be >= this; runtime: the results do not
    depend on it, so a resumed run may change it; sweep: --sweep may vary it.
    """
    factory = {"default_factory": dict} if default == {} else {"default": default}
    return dataclasses.field(**factory, metadata={
        "help": help, "flag": flag, "choices": choices, "positive": positive, "minimum": minimum,
        "runtime": runtime, "sweep": sweep and not runtime})


@dataclasses.dataclass(frozen=True)
class Config:
    model: str = _setting("cnn", "which network and its recipe: 'mlp' (Dense 3000-1000-10, SGD, "
                                 "5 epochs), 'cnn' (two conv blocks, Adam, 10 epochs), "
                                 "'airbench94' (94%% in seconds on a GPU), any registered name, "
                                 "or module:attribute naming " + CONTRACTS["model"])
    optimizer: str = _setting("adam", "the optimiser: sgd, adam, nesterov (airbench's Nesterov "
                                      "SGD with its parameter groups), muon, a registered name, "
                                      "or module:attribute naming " + CONTRACTS["optimizer"])
    learning_rate: float = _setting(None, "learning rate, in the optimiser's units (its first "
                                          "argument)", positive=True)
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
    schedule: str = _setting("constant", "learning-rate schedule: 'warmup_decay' rises linearly "
                                         "from 0.2x to 1x over the first 23%% of steps, then "
                                         "falls linearly to 0.07x",
                             choices=("constant", "warmup_decay"))
    lookahead: bool = _setting(False, "lookahead: every 5 steps, move an average of the weights "
                                      "towards them and continue from it (airbench's schedule)")
    augment: str = _setting("", "on-device augmentations, comma-separated, applied in that "
                                "order: flip, alternating_flip, translate, cutout, "
                                "colour_jitter (last: it returns float pixels), registered "
                                "names, or module:attribute, each " + CONTRACTS["augmentation"])
    tta: int = _setting(0, "test-time augmentation of the final evaluation: 0 none, 1 mirror, "
                           "2 mirror and 1-pixel translations (6 views), 3 selective: the 6 "
                           "views, weighted alike, for the least confident quarter of the "
                           "images only (cifar10-speedrun's)", choices=(0, 1, 2, 3))
    eval_batch_size: int = _setting(1000, "evaluation batch size (the results do not depend on it)",
                                    positive=True, sweep=False)
    dtype: str = _setting("float32", "computation dtype: 'bfloat16' runs activations and matmuls "
                                     "in bfloat16, parameters and optimiser state stay float32",
                          choices=("float32", "bfloat16"))
    seed: int = _setting(0, "seeds the initial weights and the shuffling: same seed, same run",
                         sweep=False)
    num_seeds: int = _setting(1, "train this many models at once, seeds --seed, --seed+1, ..., in "
                                 "one compiled program, each drawing its weights, data "
                                 "order and augmentation as its own run would; "
                                 "metrics give their mean, std and 95%% confidence interval, "
                                 "predict and evaluate use their ensemble", positive=True,
                              sweep=False)
    settings: dict = _setting({}, "the pieces' own settings, KIND.NAME -> value", flag="",
                              sweep=False)
    sweep: tuple = _setting(
        (), "train several values of any setting in one run, NAME=V1,V2,... (values that hold "
            "commas, such as a tuple or a list of augmentations, separated by ';': quote them); "
            "repeat the flag for a grid. NAME is a run setting (learning_rate, batch_size, "
            "epochs, model, optimizer, augment, ...), a piece's (optimizer.b2, model.width, "
            "augment.translate.pad, ...) or momentum, weight_decay, label_smoothing. The numbers "
            "a piece computes with train in one compiled program (x --num-seeds seeds); each "
            "value of any other setting (a shape, a model, the batch size) makes a program of "
            "its own, trained after the others in the same run. Writes sweep.csv, sweep.png and "
            "one TensorBoard run per point", flag="--sweep", sweep=False)
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
            if value is not None and field.type in (int, float):
                _check_number(field.name, value)
        lookup("model", self.model)
        _augmentations(self.augment)  # no name listed twice
        for kind, name in (("optimizer", self.optimizer), ("loss", self.loss),
                           *(("augmentation", a) for a in _augmentations(self.augment))):
            lookup(kind, name)
        sweep, pieces = _sweep(self, self.sweep)
        object.__setattr__(self, "sweep", sweep)
        object.__setattr__(self, "settings", _settings(self.settings, pieces, sweep))
        if self.learning_rate is None and "learning_rate" not in dict(self.sweep):
            defaults = {name: _first_default(name) for name in pieces["optimizer"]}
            missing = [name for name, value in defaults.items() if value is None]
            if missing:
                raise ConfigError(f"optimizer {missing[0]!r} has no default learning rate: pass "
                                  "--learning-rate")
            if len(defaults) == 1:  # several (a swept optimiser): each program's own
                object.__setattr__(self, "learning_rate", defaults[self.optimizer])

    def points(self):
        """The sweep's points in grid order (the last --sweep varies fastest), each a dict
        {setting: value}; [{}], one point of no swept setting, without a sweep."""
        names = [name for name, _ in self.sweep]
        return [dict(zip(names, values))
                for values in itertools.product(*(values for _, values in self.sweep))]

    @property
    def members(self):
        """The models the run trains: each point's --num-seeds seeds, point by point."""
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

    def settings_for(self, prefix, piece=None):
        """{parameter: value} of the settings given to the run's piece of `prefix` ('model',
        'optimizer', 'loss'; 'augment' with the augmentation's name as listed)."""
        head = f"{prefix}.{piece}." if prefix == "augment" else f"{prefix}."
        return {name[len(head):]: value for name, value in self.settings.items()
                if name.startswith(head) and "." not in name[len(head):]}

    def setting(self, name):
        """The Setting (name, default, type) of the piece setting `name` (KIND.NAME), as the
        first of the run's pieces that takes it has it."""
        pieces = _alternatives(self.model, self.optimizer, self.loss, self.augment, self.sweep)
        return _setting_of(name, pieces)[1]

    def value(self, name):
        """The value of the setting `name` in this run (a field's, or a piece setting's as
        given: None where the piece's default applies)."""
        return getattr(self, name) if name in FIELDS else self.settings.get(name)

    def at(self, point):
        """The run this one is at `point` ({setting: value} of some of its swept settings): those
        settings set to those values and swept no more; a piece's settings that its new piece
        does not take are dropped (a setting applies where a piece takes it)."""
        fields = {k: v for k, v in point.items() if k in FIELDS}
        settings = {**self.settings, **{k: v for k, v in point.items() if k not in FIELDS}}
        rest = tuple((name, values) for name, values in self.sweep if name not in point)
        pieces = _alternatives(fields.get("model", self.model),
                               fields.get("optimizer", self.optimizer),
                               fields.get("loss", self.loss), fields.get("augment", self.augment),
                               rest)
        kept = {name: value for name, value in settings.items() if _taken(name, pieces)}
        return dataclasses.replace(self, **fields, settings=kept, sweep=rest)

    def typed(self, name, value):
        """(the setting's name as the sweep has it, `value` as its swept values are typed):
        for --point NAME=VALUE. ConfigError where the sweep does not vary it."""
        pieces = _alternatives(self.model, self.optimizer, self.loss, self.augment, self.sweep)
        given, name = name, ALIASES.get(name, name)
        if name not in FIELDS and name.partition(".")[0] in PREFIXES:
            try:
                name = _split(name, pieces)[0]
            except ConfigError:
                pass  # not swept, then
        if name not in dict(self.sweep):
            raise ConfigError(f"--point {given}: the sweep does not vary it")
        try:
            return name, _typed_value(name, value, pieces)
        except ConfigError as e:
            raise ConfigError(f"--point {given}: {e}") from None

    def pieces(self):
        """(kind, name) of each piece the run names, those a sweep swaps in too: models,
        optimisers, losses, augmentations."""
        pieces = _alternatives(self.model, self.optimizer, self.loss, self.augment, self.sweep)
        return [*(("model", m) for m in pieces["model"]),
                *(("optimizer", o) for o in pieces["optimizer"]),
                *(("loss", loss) for loss in pieces["loss"]),
                *(("augmentation", a) for a in pieces["augment"])]

    @classmethod
    def for_model(cls, model="cnn", **overrides):
        """The recipe's settings for `model`, with `overrides` (None means "use the default";
        `settings` are added to the recipe's). The recipe's settings for a piece that
        `overrides` replace (its label smoothing, with another loss) go with that piece."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        for name in overrides:
            if name in ALIASES or name not in FIELDS:
                hint = (f"a piece's setting goes in settings={{{ALIASES[name]!r}: ...}}"
                        if name in ALIASES else f"the run's settings are {', '.join(FIELDS)}")
                raise ConfigError(f"{name!r} is not a setting of the run: {hint}")
        given = overrides.pop("settings", {})
        check_sweep_flags(overrides.get("sweep", ()), {**overrides, **given})
        recipe = dict(lookup("model", model).recipe)
        unknown = [name for name in recipe if name not in FIELDS or name == "model"]
        if unknown:
            raise ConfigError(f"the recipe of model {model!r} sets {unknown[0]!r}, which is not "
                              "a setting of a run (register_model takes Config's fields and "
                              "settings={...})")
        recipe_settings = recipe.pop("settings", {})
        fields = {**recipe, **overrides}
        swept = {ALIASES.get(name, name) for name, _ in _pairs(fields.get("sweep", ()))}
        augment = _augmentations(fields.get("augment", FIELDS["augment"].default))

        def goes_with_its_piece(name):  # the recipe's piece is still the run's
            prefix = name.partition(".")[0]
            if name in swept:  # the sweep gives its values
                return False
            if prefix in ("optimizer", "loss") and prefix in overrides:
                return overrides[prefix] == recipe.get(prefix, FIELDS[prefix].default)
            if prefix == "augment" and "augment" in overrides:
                return name.rpartition(".")[0][len("augment."):] in augment
            return True

        settings = {**{k: v for k, v in recipe_settings.items() if goes_with_its_piece(k)},
                    **given}
        return cls(model=model, **fields, settings=settings)

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

    @classmethod
    def from_json(cls, text):
        settings = json.loads(text)
        for kind, names in settings.pop("imports", {}).items():
            for name, path in names.items():
                reimport(kind, name, path)
        return cls(**_migrated(settings))

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


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# Settings a resumed run may change: the results do not depend on them.
RUNTIME_FIELDS = tuple(f.name for f in dataclasses.fields(Config) if f.metadata["runtime"])


def _check_number(name, value):
    """`value` is a number the field `name` may take, or ConfigError says what it must be."""
    field = FIELDS[name]
    meta = field.metadata
    if not _number(value, field.type):
        raise ConfigError(f"{name} must be {'an integer' if field.type is int else 'a number'}, "
                          f"got {value!r}")
    if meta["positive"] and not 0 < value < math.inf:
        noun = "integer" if field.type is int else "number"
        raise ConfigError(f"{name} must be a positive {noun}, got {value!r}")
    if meta["minimum"] is not None and not meta["minimum"] <= value < math.inf:
        raise ConfigError(f"{name} must be at least {meta['minimum']}, got {value!r}")


def _number(value, kind):
    """`value` is an int (or, for float fields, also a float); bools are not numbers."""
    return not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else int)


def _first_default(optimizer):
    """The default of the optimiser's first parameter (its learning rate), or None."""
    first = next(iter(parameters(lookup("optimizer", optimizer).obj).values()), None)
    return None if first is None or first.default is REQUIRED else first.default


def _augmentations(augment):
    names = tuple(name.strip() for name in augment.split(",") if name.strip())
    repeated = [name for i, name in enumerate(names) if name in names[:i]]
    if repeated:
        raise ConfigError(f"augmentation {repeated[0]!r} is listed twice in augment {augment!r}")
    return names


def _pairs(spec):
    """A sweep given as {name: values} or (name, values) pairs (config.json's lists too)."""
    return list(spec.items()) if isinstance(spec, dict) else [tuple(pair) for pair in spec]


def _alternatives(model, optimizer, loss, augment, sweep):
    """{"model": [names], "optimizer": [...], "loss": [...], "augment": [names]}: the pieces the
    run trains with, those a sweep of model, optimizer, loss or augment swaps in too (in the
    order given; each augmentation once)."""
    swept = dict(_pairs(sweep))
    found = {prefix: [] for prefix in PREFIXES}
    for prefix, base in (("model", model), ("optimizer", optimizer), ("loss", loss)):
        for name in (base, *swept.get(prefix, ())):
            if name not in found[prefix]:
                found[prefix].append(name)
    for listing in (augment, *swept.get("augment", ())):
        for name in _augmentations(listing):
            if name not in found["augment"]:
                found["augment"].append(name)
    return found


def _final(name):
    """An import path's last name ('mymod.aug:gray' -> 'gray'); a registered name itself."""
    return name.rpartition(":")[2].rpartition(".")[2]


def _split(name, pieces):
    """(canonical name, prefix, the pieces of that kind to look in, parameter) of the piece
    setting `name`: "optimizer.b2", "augment.translate.pad" (the augmentation as listed, or by
    its last name where that is unique). ConfigError says what is wrong with it."""
    prefix, _, rest = name.partition(".")
    if prefix == "augment":
        listed, dot, param = rest.rpartition(".")
        if not dot or not listed:
            raise ConfigError(f"{name}: an augmentation's setting is augment.NAME.SETTING, NAME "
                              "as --augment lists it")
        if listed not in pieces["augment"]:
            same = [a for a in pieces["augment"] if _final(a) == listed]
            if len(same) > 1:
                raise ConfigError(f"{name}: {listed!r} could be {' or '.join(same)}: write the "
                                  "augmentation as --augment lists it")
            if not same:
                raise ConfigError(f"{name}: {listed!r} is not among the run's augmentations "
                                  f"({', '.join(pieces['augment']) or 'none'}): add it to "
                                  "--augment, or drop the setting")
            listed = same[0]
        candidates, canonical = [listed], f"augment.{listed}.{param}"
    else:
        param, candidates, canonical = rest, pieces[prefix], name
    if not param.isidentifier():
        raise ConfigError(f"{name}: {param!r} is not a setting's name (KIND.NAME, e.g. "
                          "optimizer.b2, model.width, augment.translate.pad)")
    return canonical, prefix, candidates, param


def _taken(name, pieces):
    """Whether a piece of the run takes the setting `name`."""
    try:
        return bool(_takers(name, pieces)[2])
    except ConfigError:
        return False


def _takers(name, pieces):
    """(canonical name, prefix, [(piece, Setting) of each piece that takes it], candidates)."""
    canonical, prefix, candidates, param = _split(name, pieces)
    kind = PREFIXES[prefix]
    takers = [(piece, settings_of(kind, lookup(kind, piece).obj).get(param))
              for piece in candidates]
    return canonical, prefix, [(piece, s) for piece, s in takers if s is not None], candidates


def _setting_of(name, pieces, every=False):
    """(canonical name, its Setting) of the piece setting `name`, taken by some of the run's
    pieces of its kind (`every`: by all of them, as a swept one must be). ConfigError names
    the settings the pieces take otherwise."""
    canonical, prefix, takers, candidates = _takers(name, pieces)
    kind, param = PREFIXES[prefix], canonical.rpartition(".")[2]
    missing = [piece for piece in candidates if piece not in dict(takers)]
    if takers and not (every and missing):
        return canonical, takers[0][1]
    piece = missing[0]
    own = settings_of(kind, lookup(kind, piece).obj)
    if kind == "optimizer" and param == _first(piece):
        why = "the learning rate is the run's: --learning-rate"
    elif param in RUN_ARGUMENTS[kind]:
        why = f"the run gives it {param} itself"
    else:
        why = f"its settings are {', '.join(own)}" if own else "it has no settings"
    which = f"{kind} {piece!r}" + (" (one the sweep trains)" if len(candidates) > 1 else "")
    raise ConfigError(f"{canonical}: {which} has no setting {param!r}; {why}")


def _first(optimizer):
    return next(iter(parameters(lookup("optimizer", optimizer).obj)), None)


def _typed_value(name, value, pieces):
    """`value` of the setting `name` (a field's or a piece's) as the setting takes it; text is
    parsed. ConfigError says what it must be."""
    if name in FIELDS:
        field = FIELDS[name]
        if field.type in (int, float, bool):
            value = _parsed(Setting(name, REQUIRED, field.type), value)
        if field.type in (int, float):
            _check_number(name, value)
        if field.metadata["choices"] and value not in field.metadata["choices"]:
            raise ConfigError(f"unknown {name} {value!r}: choose one of "
                              f"{', '.join(map(str, field.metadata['choices']))}")
        if field.type is str and not isinstance(value, str):
            raise ConfigError(f"{name} must be text, got {value!r}")
        return value
    canonical, setting = _setting_of(name, pieces)
    return _parsed(setting, value, canonical)


def _parsed(setting, value, name=None):
    try:
        return check(setting, value)
    except ValueError as e:
        raise ConfigError(f"{name or setting.name} {e}") from None


def _sweep(config, spec):
    """(the sweep as ((name, (value, ...)), ...), every name canonical and every value typed
    and checked as its setting takes it; the run's pieces with those the sweep swaps in).
    ConfigError says what is wrong with the first bad part."""
    pairs, seen = [], set()
    for name, values in _pairs(spec):
        name = ALIASES.get(name, name)
        field = FIELDS.get(name)
        if name in ("seed", "num_seeds"):
            raise ConfigError(f"--sweep {name}: seeds are not swept: --num-seeds N trains seeds "
                              "--seed to --seed+N-1 at every point")
        if field is not None and not field.metadata["sweep"]:
            raise ConfigError(f"--sweep {name}: {name} does not change what a run computes, or "
                              "is not a setting to sweep")
        if field is None and name.partition(".")[0] not in PREFIXES or name.endswith("."):
            raise ConfigError(f"--sweep {name}: no such setting; sweep a run's setting "
                              "(learning_rate, batch_size, epochs, model, optimizer, augment, "
                              "...) or a piece's (optimizer.b2, model.width, "
                              "augment.translate.pad, ...)")
        if name in seen:
            raise ConfigError(f"--sweep {name} is given twice: list all its values in one "
                              f"--sweep {name}=V1,V2,...")
        seen.add(name)
        values = tuple(values)
        if not values:
            raise ConfigError(f"--sweep {name} has no values: give them as {name}=V1,V2,...")
        pairs.append((name, values))
    # The swept pieces first: what the other values are typed by depends on them.
    for i, (name, values) in enumerate(pairs):
        if name in PREFIXES:
            values = tuple(_swept_value(name, v, None) for v in values)
            for value in values:
                for piece in (_augmentations(value) if name == "augment" else [value]):
                    with _prefixed(f"--sweep {name}: "):
                        lookup(PREFIXES[name], piece)
            pairs[i] = (name, values)
    pieces = _alternatives(config.model, config.optimizer, config.loss, config.augment, pairs)
    normal = []
    for name, values in pairs:
        if name not in FIELDS:
            with _prefixed("--sweep "):
                name = _setting_of(name, pieces, every=True)[0]
        typed = tuple(_swept_value(name, v, pieces) for v in values)
        for i, value in enumerate(typed):
            if value in typed[:i]:
                raise ConfigError(f"--sweep {name} lists {show(value)} twice: give each value once")
        normal.append((name, typed))
    return tuple(normal), pieces


@contextlib.contextmanager
def _prefixed(prefix):
    """ConfigErrors (ExtensionErrors too) raised inside begin with `prefix`."""
    try:
        yield
    except ConfigError as e:
        raise type(e)(f"{prefix}{e}") from None


def _swept_value(name, value, pieces):
    try:
        return _typed_value(name, value, pieces) if pieces is not None or name in FIELDS else value
    except ConfigError as e:
        raise ConfigError(f"--sweep {name}: {e}") from None


def _settings(given, pieces, sweep):
    """The pieces' settings `given` ({KIND.NAME: value}), each name canonical and each value as
    its setting takes it, sorted by name. ConfigError says what is wrong with the first bad
    one, or names a piece's setting that has no default and is not given."""
    if not isinstance(given, dict):
        raise ConfigError(f"settings must be a dict {{KIND.NAME: value}}, got {given!r}")
    settings = {}
    for name, value in given.items():
        if name.partition(".")[0] not in PREFIXES or "." not in name:
            hint = f"write {ALIASES[name]}" if name in ALIASES else \
                "e.g. optimizer.momentum, model.width, augment.translate.pad"
            raise ConfigError(f"settings: {name!r} is not a piece's setting KIND.NAME ({hint})")
        canonical, setting = _setting_of(name, pieces)
        if canonical in settings:
            raise ConfigError(f"{canonical} is given twice (as {name} too): give it once")
        settings[canonical] = _parsed(setting, value, canonical)
    swept = dict(sweep)
    for name in settings:
        if name in swept:
            raise ConfigError(f"--sweep {name} and --{name} both set {name}: drop one")
    for prefix, kind in PREFIXES.items():
        for piece in pieces[prefix]:  # (a built module's attributes all have values)
            for param, setting in settings_of(kind, lookup(kind, piece).obj, built=False).items():
                name = f"augment.{piece}.{param}" if prefix == "augment" else f"{prefix}.{param}"
                if setting.default is REQUIRED and name not in settings and name not in swept:
                    raise ConfigError(f"{kind} {piece!r} needs its setting {param!r}, which has no "
                                      f"default: pass --{name} VALUE")
    return dict(sorted(settings.items()))


def check_sweep_flags(sweep, given):
    """A setting is not both swept and set: ConfigError names the first such one. `given`:
    the settings the command line (or the caller) set, by name (a piece's as KIND.NAME).
    (--model with --sweep model=... is allowed: --model names the recipe then.)"""
    given = {ALIASES.get(k, k): v for k, v in given.items() if v is not None}
    for name, _ in _pairs(sweep):
        name = ALIASES.get(name, name)
        if name in given and name != "model":
            flag = (FIELDS[name].metadata["flag"] or "--" + name.replace("_", "-")
                    if name in FIELDS else "--" + name)
            raise ConfigError(f"--sweep {name} and {flag} both set {name}: drop one")


# --------------------------------------------------------------------------------------------
# config.json written by earlier versions
# --------------------------------------------------------------------------------------------

# Settings that were Config's fields until the pieces took their own settings (issue 30), and
# the built-in augmentations' parameters renamed then (translate_pad -> translate's pad).
_OLD_PIECE_FIELDS = ("momentum", "weight_decay", "label_smoothing", "bias_scaler",
                     "whiten_bias_epochs", "bias_lr", "head_lr", "translate_pad", "cutout_size")
_RENAMED = {"translate": {"translate_pad": "pad"}, "cutout": {"cutout_size": "size"}}


def _migrated(settings):
    """The settings of a config.json as this version names them."""
    if "keep" in settings:  # runs written before the field was renamed
        settings["keep_checkpoints"] = settings.pop("keep")
    if settings.get("loss") in ("mean", "sum"):  # before the loss became a piece, when
        settings["reduction"] = settings.pop("loss")  # these were nesterov's alone
        if settings.get("optimizer") != "nesterov":
            for name in ("momentum", "weight_decay", "bias_scaler", "whiten_bias_epochs"):
                settings.pop(name, None)
    old = {name: settings.pop(name) for name in _OLD_PIECE_FIELDS if name in settings}
    if not old:
        return settings
    # Then a setting went to every piece whose signature named it; now each piece has its own.
    # One that no piece took was a default (runs before pieces).
    pieces = [("optimizer", None, settings.get("optimizer", FIELDS["optimizer"].default)),
              ("loss", None, settings.get("loss", FIELDS["loss"].default)),
              *(("augment", a, a) for a in _augmentations(settings.get("augment", "")))]

    def homes(name):
        for prefix, listed, piece in pieces:
            param = _RENAMED.get(listed, {}).get(name, name)
            if param in settings_of(PREFIXES[prefix], lookup(PREFIXES[prefix], piece).obj):
                yield f"augment.{listed}.{param}" if listed else f"{prefix}.{param}"

    given = dict(settings.get("settings", {}))
    swept = {name for name, _ in _pairs(settings.get("sweep", ()))}
    for name, value in old.items():
        if value is not None and name not in swept:
            given.update({home: value for home in homes(name)})
    settings["settings"] = given
    settings["sweep"] = [(next(homes(name), name) if name in _OLD_PIECE_FIELDS else name, values)
                         for name, values in _pairs(settings.get("sweep", ()))]
    return settings


def default_text(name):
    """How `--help` states a field's default: its value, then the recipes that differ
    ("10; mlp: 5, airbench94: 9.9"), or None where the help text says it all."""
    base = FIELDS[name].default
    others = {model: entry.recipe[name] for model, entry in REGISTRY["model"].items()
              if entry.recipe.get(name, base) != base}
    show_ = lambda value: "none" if value == "" else str(value)
    if name == "learning_rate":  # the optimisers' own defaults
        return "; ".join([*(f"{piece}: {_first_default(piece)}" for piece in REGISTRY["optimizer"]
                            if _first_default(piece) is not None),
                          *(f"{model}: {show_(v)}" for model, v in others.items())]) or None
    if isinstance(base, bool):  # a switch
        return f"off; on for {', '.join(others)}" if others and not base else None
    if base is None or base in ((), {}):
        return None
    return "; ".join([show_(base), *(f"{model}: {show_(v)}" for model, v in others.items())])
