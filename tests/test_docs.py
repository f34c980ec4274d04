"""README.md and docs/: every relative link and anchor resolves, and every `python -m cifar_jax.*`
command line in them parses with today's flags."""

import re
import shlex
from pathlib import Path

import pytest

from cifar_jax import evaluate, main, predict

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PARSERS = {"train": lambda argv: main.parse_args(argv), "evaluate": evaluate.parse_args,
           "predict": predict.parse_args}


def slug(heading):
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page):
    return {slug(line.lstrip("#")) for line in page.read_text().splitlines()
            if re.match(r"#{1,6} ", line)}


def links():
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if not re.match(r"(https?|mailto):", target):
                yield pytest.param(page, target, id=f"{page.name}:{target}")


@pytest.mark.parametrize("page,target", list(links()))
def test_links_and_anchors_resolve(page, target):
    path, _, anchor = target.partition("#")
    linked = (page.parent / path).resolve() if path else page
    assert linked.exists(), f"{page.name} links to {path}, which does not exist"
    if anchor:
        assert anchor in anchors(linked), f"{page.name}: no heading #{anchor} in {linked.name}"


def command_lines():
    """(page, words) of each `python -m cifar_jax.X ...` in a page: code-block lines (with their
    backslash continuations) and inline code, up to a comment or a shell operator."""
    for page in PAGES:
        # prose joined into one line (inline code may wrap), code blocks line by line
        parts = re.split(r"(```.*?```)", page.read_text(), flags=re.S)
        text = "".join(part if part.startswith("```") else part.replace("\n", " ")
                       for part in parts)
        text = re.sub(r"\\\n\s*", " ", text)
        for match in re.finditer(r"python -m cifar_jax\.(\w+)([^`\n]*)", text):
            words = shlex.split(match.group(2), comments=True)
            for i, word in enumerate(words):
                if word in ("&&", "|", ";", ">", "2>&1") or word.startswith(">"):
                    words = words[:i]
                    break
            if match.group(1) in PARSERS and not {"-h", "--help", "..."} & set(words):
                yield pytest.param(match.group(1), words,
                                   id=f"{page.name}:{match.group(1)} {' '.join(words)}"[:120])


@pytest.mark.parametrize("module,argv", list(command_lines()))
def test_command_lines_parse_with_todays_flags(module, argv, capsys):
    try:
        PARSERS[module](argv)
    except SystemExit:
        pytest.fail(f"python -m cifar_jax.{module} {shlex.join(argv)}: "
                    f"{capsys.readouterr().err.strip()}")
