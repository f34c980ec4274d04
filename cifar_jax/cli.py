"""What the command-line tools share: one-line usage errors, checked numbers, the flags
generated from `Config`'s fields, and the pieces' own settings (`--model.width 64`)."""

import argparse
import dataclasses
import re

from cifar_jax.config import ALIASES, Config, ConfigError, default_text
from cifar_jax.registry import REQUIRED, lookup, noun, settings_of, show

# Flags of settings that became their piece's own (`--optimizer.bias_lr`): named in the error.
RENAMED = {"--bias-scaler": "--optimizer.bias_scaler",
           "--whiten-bias-epochs": "--optimizer.whiten_bias_epochs",
           "--bias-lr": "--optimizer.bias_lr", "--head-lr": "--optimizer.head_lr",
           "--translate-pad": "--augment.translate.pad", "--cutout-size": "--augment.cutout.size"}
_PIECE_FLAG = re.compile(r"--(model|optimizer|loss|augment)\.")
SETTINGS_HELP = ("A piece's own settings are its keyword parameters (a model's attributes, an "
                 "optimiser's, a loss's, an augmentation's arguments), set as --KIND.NAME VALUE: "
                 "--model.width 64, --model.features 32,64 (a tuple: comma-separated), "
                 "--optimizer.b2 0.95, --loss.gamma 2, and for an augmentation "
                 "--augment.AUG.NAME VALUE, AUG as --augment lists it or its last name "
                 "(--augment.translate.pad 4; --augment.gray.strength 0.5 for mymod:gray). Each "
                 "value is parsed to the type of the parameter's default or annotation. "
                 "--momentum, --weight-decay and --label-smoothing are short for "
                 "--optimizer.momentum, --optimizer.weight_decay and --loss.label_smoothing.")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit code 2, without the usage dump; its
    --help ends with the environment variables the command lines read."""

    def __init__(self, **kwargs):
        super().__init__(epilog="environment: CIFAR_JAX_COMPILATION_CACHE=0 turns off JAX's "
                                "persistent compilation cache (on by default, in "
                                "~/.cache/cifar_jax/jax; =DIR moves it)", **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(text, kind):
    """`text` as an int, or for `kind` float a float unless it is written as an int ('10')."""
    try:
        return int(text)
    except ValueError:
        return float(text) if kind is float else None


def positive(kind):
    """An argparse `type` accepting only finite numbers > 0 of `kind` (int or float)."""
    def parse(text):
        try:
            value = _number(text, kind)
        except ValueError:
            value = None
        if value is None or not value > 0 or value == float("inf"):
            noun = "integer" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"must be a positive {noun}, got {text!r}")
        return value
    parse.__name__ = kind.__name__
    return parse


def nonnegative_int(text):
    """An argparse `type` for an index: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


nonnegative_int.__name__ = "int"


def sweep_spec(text):
    """An argparse `type` for --sweep: 'NAME=V1,V2,...' -> (NAME, ('V1', 'V2', ...)); the
    values are separated by ';' where the text holds one (values that hold commas: tuples,
    lists of augmentations). Whether the setting and its values make sense, and their types,
    are `Config`'s to say."""
    name, equals, values = text.partition("=")
    if not equals or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=V1,V2,... (e.g. learning_rate=1e-3,2e-3), "
                                         f"got {text!r}")
    if ";" in values:
        return name.strip(), tuple(value.strip() for value in values.split(";"))
    return name.strip(), tuple(filter(None, (value.strip() for value in values.split(","))))


sweep_spec.__name__ = "NAME=V1,V2,..."


def point_spec(text):
    """An argparse `type` for --point: 'NAME=VALUE' -> (NAME, 'VALUE'), typed by the sweep."""
    name, equals, value = text.partition("=")
    if not equals or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. learning_rate=0.001), got "
                                         f"{text!r}")
    return name.strip(), value.strip()


point_spec.__name__ = "NAME=VALUE"


def add_model_choice(parser, verb):
    """--member and --point of `evaluate` and `predict`: which of a saved run's models they
    `verb` ("evaluate", "use")."""
    parser.add_argument("--member", type=nonnegative_int, metavar="I",
                        help=f"of a multi-seed run (--num-seeds), {verb} model I (0-based; seed "
                             "--seed + I) alone (default: the ensemble of all, their mean "
                             "probabilities)")
    parser.add_argument("--point", type=point_spec, action="append", metavar="NAME=VALUE",
                        help=f"of a sweep (--sweep), {verb} this point's models (repeat for each "
                             "swept setting of a grid, e.g. --point model.features=32,64 --point "
                             "learning_rate=0.001; default: the best point)")


def add_config_flags(parser):
    """One option per `Config` field, with the field's help, choices and default, and the
    short forms of `ALIASES` (--momentum for --optimizer.momentum).

    Every option defaults to None ("not given"), so that the model's recipe, or on --resume the
    run's saved config, supplies what the user left out.
    """
    for field in dataclasses.fields(Config):
        meta = field.metadata
        if meta["flag"] == "":  # `settings`: the --KIND.NAME options (`split_settings`)
            continue
        flag = meta["flag"] or "--" + field.name.replace("_", "-")
        default = default_text(field.name)
        help = meta["help"] + (f" (default: {default})" if default else "")
        if field.type is tuple:  # --sweep NAME=V1,V2,..., repeated
            parser.add_argument(flag, dest=field.name, action="append", type=sweep_spec,
                                metavar="NAME=V1,V2,...", help=help)
            continue
        if field.type is bool:  # a switch: turns the default (on or off) round
            parser.add_argument(flag, dest=field.name, action="store_const",
                                const=not field.default, help=help)
            continue
        kind = field.type if field.type in (int, float) else str
        if kind is float and not meta["positive"]:
            kind = lambda text: _number(text, float)
            kind.__name__ = "number"
        choices = sorted(meta["choices"]) if meta["choices"] else None
        parser.add_argument(flag, dest=field.name, help=help, choices=choices,
                            metavar=None if choices else flag[2:].upper().replace("-", "_"),
                            type=positive(kind) if meta["positive"] else kind)
    for alias, name in ALIASES.items():
        parser.add_argument("--" + alias.replace("_", "-"), dest=alias, metavar="VALUE",
                            help=f"short for --{name}")


def split_settings(parser, argv):
    """(argv without the pieces' settings, {KIND.NAME: text} of them): the `--model.width 64`
    and `--augment.translate.pad=4` options, taken out before argparse parses the rest (which
    options exist depends on the pieces). A renamed flag is a usage error naming its new form."""
    rest, settings, i = [], {}, 0
    while i < len(argv):
        arg = argv[i]
        flag = arg.partition("=")[0]
        if flag in RENAMED:
            parser.error(f"{flag} is a setting of its piece now: {RENAMED[flag]}")
        if not _PIECE_FLAG.match(arg):
            rest.append(arg)
            i += 1
            continue
        name, equals, value = arg[2:].partition("=")
        if not equals:
            if i + 1 == len(argv):
                parser.error(f"argument --{name}: expected a value")
            value, i = argv[i + 1], i + 1
        if name in settings:
            parser.error(f"argument --{name} is given twice: give it once")
        settings[name] = value
        i += 1
    return rest, settings


def config_overrides(args, settings=None):
    """The Config settings given on the command line parsed by `add_config_flags`, with the
    pieces' `settings` ({KIND.NAME: text}, `split_settings`) and the short forms among them."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
                 if f.metadata["flag"] != "" and getattr(args, f.name) is not None}
    given = dict(settings or {})
    for alias, name in ALIASES.items():
        if getattr(args, alias, None) is not None:
            if name in given:
                raise ConfigError(f"--{alias.replace('_', '-')} and --{name} both set {name}: "
                                  "give one")
            given[name] = getattr(args, alias)
    if given:
        overrides["settings"] = given
    swept = [values for name, values in overrides.get("sweep", ()) if name == "model" and values]
    if "model" not in overrides and swept:  # --sweep model=A,B alone: A's recipe
        overrides["model"] = swept[0][0]
    return overrides


def add_piece_help(parser, config):
    """A --help section per piece `config` names (those a sweep swaps in too): each of its
    settings as --KIND.NAME with its type and default, and the run's value where the recipe
    or the command line gives one."""
    shown = set()
    for kind, name in config.pieces():
        prefix = "augment" if kind == "augmentation" else kind
        head = f"augment.{name}." if prefix == "augment" else f"{prefix}."
        settings = settings_of(kind, lookup(kind, name).obj)
        group = parser.add_argument_group(
            f"settings of the {kind} {name!r}",
            None if settings else "none" + (": its learning rate is --learning-rate"
                                             if kind == "optimizer" else ""))
        for param, setting in settings.items():
            flag = f"--{head}{param}"
            if flag in shown:
                continue
            shown.add(flag)
            default = ("none: give one" if setting.default is REQUIRED
                       else show(setting.default))
            given = config.settings.get(head + param)
            group.add_argument(flag, dest=f"_shown{flag}", metavar=_metavar(setting),
                               help=f"{noun(setting)} (default: {default}"
                                    + (f"; this run: {show(given)})" if given is not None else ")"))


def _metavar(setting):
    kinds = {bool: "BOOL", int: "INT", float: "FLOAT", str: "TEXT", None: "VALUE"}
    return f"{kinds[setting.item]},..." if setting.type is tuple else kinds[setting.type]


def help_config(argv, settings):
    """The Config that `argv` (a train command line with --help, without the pieces'
    `settings`, {KIND.NAME: text}) names, to list its pieces' settings: the run's in --workdir
    with --resume, else the recipe's with the pieces and settings given. ConfigError says why
    they do not make one."""
    pre = argparse.ArgumentParser(add_help=False)
    for name in ("model", "optimizer", "loss", "augment", "workdir"):
        pre.add_argument(f"--{name}")
    pre.add_argument("--resume", action="store_true")
    pre.add_argument("--sweep", action="append", default=[])
    known = pre.parse_known_args(argv)[0]
    try:
        if known.resume and known.workdir:
            return Config.load(known.workdir)
        sweep = [sweep_spec(text) for text in known.sweep]
        given = {name: getattr(known, name) for name in ("optimizer", "loss", "augment")
                 if getattr(known, name) is not None}
        model = known.model or next((values[0] for name, values in sweep if name == "model"),
                                    "cnn")
        # Any learning rate: the help lists the pieces' settings, not it (the run itself asks
        # for one where the optimiser has no default).
        swept_rate = any(name == "learning_rate" for name, _ in sweep)
        return Config.for_model(model, **given, learning_rate=None if swept_rate else 1.0,
                                sweep=sweep or None, settings=settings)
    except argparse.ArgumentTypeError as e:
        raise ConfigError(str(e)) from None
