"""The pieces a run is made of (a model, an optimiser, augmentations, a loss): what each must be,
the names they are registered under, import paths, and each piece's own settings.

A piece is named either by a registered name (`register_model` and its three siblings, which
cifar_jax's own recipes in `cifar_jax/recipes/` call too) or by an import path
`module:attribute`, imported on first use. Its contract is `CONTRACTS` (checked before a run
starts: `cifar_jax.contracts`).

A piece's settings are its keyword parameters (`settings_of`): a model's attributes (a Flax
module's dataclass fields) or its build function's keywords, an optimiser's, a loss's, an
augmentation's; what the run itself hands a piece (`RUN_ARGUMENTS`: the learning rate, the
batch size, the PRNG keys, ...) is not a setting. Each setting has a type, read from its
default or its annotation, that a value given as text is parsed to (`parse`).

This module is the bottom of the package: it imports nothing else of cifar_jax, nor JAX.
"""

import dataclasses
import functools
import importlib
import inspect
import math
import re
import types
import typing
from typing import Any, NamedTuple

# What each kind of piece must be; --help, the README and the error messages say it so.
CONTRACTS = {
    "model": "a Flax module class (Linen or NNX), or a function returning a module (given "
             "dtype= where it takes one), applied as apply(variables, images, train=...) to "
             "float images in [0, 1] of shape [B, 32, 32, 3] and returning logits [B, 10]",
    "optimizer": "a function of the learning rate (a number; the run's schedule scales its "
                 "updates) returning an optax.GradientTransformation",
    "augmentation": "a pure function (images, key) of uint8 images [B, 32, 32, 3] and a PRNG "
                    "key, returning images of the same shape: uint8, or float32 in the same "
                    "0-255 scale (a colour change that needs finer steps)",
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


class _Registry(dict):
    """{kind: {name: Entry}}. cifar_jax's own pieces and recipes register when it is first
    read, by importing `cifar_jax.recipes` (which loads JAX): importing the package, its config
    and this registry loads no JAX, and a user's registration comes after them, as if they
    had registered at import."""

    loaded = False

    def _load(self):
        if not _Registry.loaded:
            _Registry.loaded = True  # before the import: the recipes' registrations read it
            importlib.import_module("cifar_jax.recipes")

    def __getitem__(self, kind):
        self._load()
        return super().__getitem__(kind)

    def items(self):
        self._load()
        return super().items()

    def values(self):
        self._load()
        return super().values()


REGISTRY = _Registry({kind: {} for kind in CONTRACTS})
_IMPORTED = {kind: {} for kind in CONTRACTS}  # import paths resolved so far


def register_model(name, build, **recipe):
    """Make the model `build` (CONTRACTS["model"]) available as `name`, with its recipe: any
    of the run's settings, e.g. optimizer="adam", epochs=30, batch_size=512, and `settings`,
    defaults for its pieces' own settings: settings={"loss.label_smoothing": 0.2}. A module
    may define `init_from_data(self, variables, images)`, called once on a fresh state with
    the uint8 training images (airbench94's whitening stem). The recipe is checked when a
    run uses it (`Config.for_model`)."""
    _register("model", name, build, recipe)


def register_optimizer(name, fn):
    """Make the optimiser `fn` (CONTRACTS["optimizer"]) available as `name`. It is called as
    `fn(learning_rate, **settings)`: its own settings (its other keyword parameters, set as
    --optimizer.NAME), and those of `RUN_ARGUMENTS["optimizer"]` that it names (batch_size,
    total_steps, ...). Its learning rate's default is the run's default."""
    _register("optimizer", name, fn)


def register_augmentation(name, fn):
    """Make the augmentation `fn` (CONTRACTS["augmentation"]) available as `name`. It runs
    inside the compiled step as `fn(images, **arguments)`, given its own settings (set as
    --augment.NAME.SETTING) and those of `RUN_ARGUMENTS["augmentation"]` that it names: `key`
    (this batch's), `run_key` (the same all run), `indices` (the images' positions in the
    training set), `epoch` (0-based)."""
    _register("augmentation", name, fn)


def register_loss(name, fn):
    """Make the per-example loss `fn` (CONTRACTS["loss"]) available as `name`. It is called as
    `fn(logits, labels, **settings)` with its own settings (set as --loss.NAME); the step masks
    padded examples and takes the mean or the sum (--reduction)."""
    _register("loss", name, fn)


def _register(kind, name, obj, recipe=None):
    if not isinstance(name, str) or not name or set(name) & set(":,;. "):
        raise ValueError(f"register_{kind}: the name must be a word without ':', ',', ';', '.' "
                         "or spaces (those are for import paths, lists and settings), got "
                         f"{name!r}")
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
        raise ExtensionError(f"{kind} {path!r}: importing {module_name} failed: "
                             f"{_one_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - whatever the module's own code raises
        raise ExtensionError(f"{kind} {path!r}: importing {module_name} failed: "
                             f"{_one_line(e)}") from None
    obj = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ExtensionError(f"{kind} {path!r}: module {module_name} has no attribute "
                                 f"{attribute!r}; {expected}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ExtensionError(f"{kind} {path!r} is a {type(obj).__name__}; {expected}")
    return obj


def reimport(kind, name, path):
    """Register `name` again from `path`, as a run's config.json recorded it, unless it is
    registered already (importing its module may register it itself)."""
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


def _one_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def parameters(fn):
    """`fn`'s parameters by name (a class: its constructor's); {} where Python cannot tell."""
    try:
        found = dict(inspect.signature(fn).parameters)
        if isinstance(fn, type) and all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                                        for p in found.values()):  # NNX's metaclass hides it
            found = dict(list(inspect.signature(fn.__init__).parameters.items())[1:])
        return found
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
# Each piece's own settings
# --------------------------------------------------------------------------------------------

# What the run hands a piece itself, where the piece's signature names it: not settings. (An
# optimiser's first parameter is the learning rate, whatever its name: --learning-rate; a
# loss's first two are the logits and labels, an augmentation's first the images.)
RUN_ARGUMENTS = {
    "model": ("dtype", "rngs"),  # --dtype; an NNX module's Rngs (the init's and step's keys)
    "optimizer": ("batch_size", "total_steps", "steps_per_epoch", "dtype", "schedule"),
    "augmentation": ("key", "run_key", "indices", "epoch"),
    "loss": (),
}
_INPUTS = {"model": 0, "optimizer": 1, "augmentation": 1, "loss": 2}  # leading parameters
_FLAX_FIELDS = ("parent", "name")  # every Flax module has them: not settings

REQUIRED = inspect.Parameter.empty  # a setting without a default: the run must give it
_SIMPLE = (bool, int, float, str)


class Setting(NamedTuple):
    """One setting of a piece: its parameter's name, its default (REQUIRED if none), and the
    type a value is parsed to: bool, int, float, str or tuple (`item`: its items' type), or
    None where neither the default nor the annotation says (a number where the text is one,
    else the text)."""

    name: str
    default: Any
    type: type | None
    item: type | None = None


def settings_of(kind, obj, built=True):
    """{name: Setting} of the piece `obj` of `kind`, in signature order: its keyword
    parameters but the inputs and `RUN_ARGUMENTS`; for a model, a Linen module class's
    dataclass fields, an NNX module class's constructor's keywords, or a build function's
    keywords and then (unless not `built`: the function is not called then) the fields of the
    module it builds (set on the built module: `Module.clone`). Parameters of other types (a
    function, an initialiser) are not settings."""
    found = {}
    if kind == "model" and isinstance(obj, type) and dataclasses.is_dataclass(obj):
        for field in dataclasses.fields(obj):
            if field.init and field.name not in (*_FLAX_FIELDS, *RUN_ARGUMENTS[kind]):
                default = (
                    field.default if field.default is not dataclasses.MISSING else
                    field.default_factory() if field.default_factory is not dataclasses.MISSING
                    else REQUIRED)
                _add(found, field.name, default, field.type)
        return found
    for i, (name, p) in enumerate(parameters(obj).items()):
        if i >= _INPUTS[kind] and name not in RUN_ARGUMENTS[kind] and p.kind in (
                p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            _add(found, name, p.default, p.annotation)
    if kind == "model" and built and not isinstance(obj, type):  # a build function
        for name, setting in _built_fields(obj).items():
            found.setdefault(name, setting)
    return found


@functools.lru_cache(maxsize=256)
def _built_fields(build):
    """The settings of the module a model's build function returns (built once, in float32,
    to read its attributes; a module is a plain dataclass until it is applied)."""
    import numpy as np  # a dtype to build with: the float32 that jnp.float32 is

    try:
        module = call(build, dtype=np.dtype("float32"))
    except Exception:  # noqa: BLE001 - the contract check says what is wrong with it, later
        return {}
    if not dataclasses.is_dataclass(module):
        return {}
    found = {}
    types_ = {f.name: f.type for f in dataclasses.fields(module)}
    for field in dataclasses.fields(module):
        if field.init and field.name not in (*_FLAX_FIELDS, *RUN_ARGUMENTS["model"]):
            _add(found, field.name, getattr(module, field.name), types_[field.name])
    return found


def _add(found, name, default, annotation):
    """Add the setting `name` to `found` unless its type is not one a value can be given in."""
    kind = _type_of(default, annotation)
    if kind is not None:
        found[name] = Setting(name, default, *kind)


_NONE = object()  # `_type_of`: a parameter that takes no value from a command line


def _type_of(default, annotation):
    """(type, item type) of a setting with this default and annotation; (None, None) where
    unknown; None where it is not a setting (its default is a function, an array, ...)."""
    declared = _annotated(annotation)
    if declared is not _NONE and declared is not None:
        if declared[0] is tuple and declared[1] is None and isinstance(default, tuple):
            return tuple, _items_type(default)
        return declared
    if isinstance(default, _SIMPLE):
        return type(default), None
    if isinstance(default, tuple) and all(isinstance(x, _SIMPLE) for x in default):
        return tuple, _items_type(default)
    if default is None or default is REQUIRED:
        return None if declared is _NONE else (None, None)
    return None


def _items_type(values):
    kinds = {type(x) for x in values}
    return kinds.pop() if len(kinds) == 1 else None


_NAMES = {"int": int, "float": float, "bool": bool, "str": str}


def _annotated(annotation):
    """(type, item) an annotation declares (types or their names as strings); None where it
    says nothing useful (none, Any, object); _NONE where it names a type that is not a
    setting's (a Callable, an array, a module)."""
    if annotation in (REQUIRED, None, Any, object, "Any", "object"):
        return None
    if isinstance(annotation, str):
        text = annotation.replace(" ", "")
        text = re.sub(r"^(?:typing\.)?Optional\[(.*)\]$", r"\1", text)
        text = re.sub(r"\|None$|^None\|", "", text)
        if text in _NAMES:
            return _NAMES[text], None
        match = re.fullmatch(r"(?:tuple|typing\.Tuple|Tuple)\[(\w+)(?:,\.\.\.|(?:,\1)*)\]", text)
        if match and match.group(1) in _NAMES:
            return tuple, _NAMES[match.group(1)]
        if text in ("tuple", "Tuple"):
            return tuple, None
        return _NONE
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return _annotated(rest[0]) if len(rest) == 1 else _NONE
    if annotation in _SIMPLE:
        return annotation, None
    if annotation is tuple:
        return tuple, None
    if origin is tuple:
        items = {a for a in args if a is not Ellipsis}
        item = items.pop() if len(items) == 1 else None
        return tuple, item if item in _SIMPLE else None
    return _NONE


_NOUNS = {bool: "true or false", int: "an integer", float: "a number", str: "text",
          None: "a number or text"}
_PLURALS = {bool: "true/false values", int: "integers", float: "numbers", str: "words",
            None: "values"}


def noun(setting):
    """What a value of `setting` must be, in a few words ('an integer')."""
    if setting.type is tuple:
        return f"comma-separated {_PLURALS[setting.item]}"
    return _NOUNS[setting.type]


def show(value):
    """A setting's value as the command line writes it: 0.001, 64, true, 32,64, flip."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(map(show, value))
    return "none" if value is None else str(value)


def parse(setting, text):
    """The value of `setting` written as `text` (the command line's), of its type; ValueError
    says what it must be."""
    text = text.strip()
    if setting.type is str:
        return text
    if setting.type is tuple:
        inner = text[1:-1] if text[:1] + text[-1:] == "()" else text
        item = Setting(setting.name, REQUIRED, setting.item)
        parts = inner.split(",")
        if len(parts) > 1 and not parts[-1].strip():  # (16,): Python's one-tuple
            parts.pop()
        return tuple(parse(item, part) for part in parts) if inner.strip() else ()
    if text.lower() == "none" and setting.default is None:
        return None
    if setting.type is bool or (setting.type is None and text.lower() in ("true", "false")):
        if text.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return text.lower() in ("true", "yes", "on", "1")
        raise ValueError(f"must be {noun(setting)}, got {text!r}")
    try:
        return int(text)
    except ValueError:
        pass
    if setting.type is int:
        raise ValueError(f"must be {noun(setting)}, got {text!r}")
    try:
        return float(text)
    except ValueError:
        if setting.type is None:
            return text
        raise ValueError(f"must be {noun(setting)}, got {text!r}") from None


def check(setting, value):
    """`value` as `setting` takes it: text parsed (`parse`), a list made a tuple, an int made a
    float for a float setting; ValueError says what it must be otherwise."""
    if isinstance(value, str) and setting.type is not str:
        value = parse(setting, value)
    if value is None and (setting.default is None or setting.type is None):
        return None
    if setting.type is tuple or (setting.type is None and isinstance(value, (list, tuple))):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"must be {noun(setting)}, got {value!r}")
        item = Setting(setting.name, REQUIRED, setting.item)
        return tuple(check(item, x) for x in value)
    fits = {bool: lambda v: isinstance(v, bool),
            int: lambda v: isinstance(v, int) and not isinstance(v, bool),
            float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            str: lambda v: isinstance(v, str),
            None: lambda v: isinstance(v, _SIMPLE)}[setting.type]
    if not fits(value):
        raise ValueError(f"must be {noun(setting)}, got {value!r}")
    if setting.type is float:
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    return value
