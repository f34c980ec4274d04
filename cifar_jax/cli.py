"""What the command-line tools share: one-line usage errors, checked numbers, and the flags
generated from `Config`'s fields."""

import argparse
import dataclasses

from cifar_jax.config import Config, default_text


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
    """An argparse `type` for --sweep: 'NAME=V1,V2,...' -> (NAME, (V1, V2, ...)). Whether the
    setting and its values make sense is `Config`'s to say."""
    name, equals, values = text.partition("=")
    if not equals or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=V1,V2,... (e.g. learning_rate=1e-3,2e-3), "
                                         f"got {text!r}")
    parsed = []
    for value in filter(None, (v.strip() for v in values.split(","))):
        try:
            parsed.append(float(value))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name.strip()}: {value!r} is not a number") from None
    return name.strip(), tuple(parsed)


sweep_spec.__name__ = "NAME=V1,V2,..."


def point_spec(text):
    """An argparse `type` for --point: 'NAME=VALUE' -> (NAME, VALUE)."""
    name, _, value = text.partition("=")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. learning_rate=0.001), got "
                                         f"{text!r}") from None


point_spec.__name__ = "NAME=VALUE"


def add_config_flags(parser):
    """One option per `Config` field, with the field's help, choices and default.

    Every option defaults to None ("not given"), so that the model's recipe, or on --resume the
    run's saved config, supplies what the user left out.
    """
    for field in dataclasses.fields(Config):
        meta = field.metadata
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


def config_overrides(args):
    """The Config settings given on the command line parsed by `add_config_flags`."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
            if getattr(args, f.name) is not None}
