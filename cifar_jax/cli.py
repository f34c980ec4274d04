"""What the command-line tools share: one-line usage errors and checked numbers."""

import argparse


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit code 2, without the usage dump."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive(kind):
    """An argparse `type` accepting only finite numbers > 0 of `kind` (int or float)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or value == float("inf"):
            noun = "integer" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"must be a positive {noun}, got {text!r}")
        return value
    parse.__name__ = kind.__name__
    return parse
