"""examples/ end to end on mock data: each script's two arms train, a few steps each."""

import importlib
import json
import os

import tensorflow_datasets as tfds
from conftest import MOCK_EXAMPLES

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
# One seed (test_seeds tests many); the baseline arms' settings are those of the session's
# other runs (cnn_run, airbench_run), whose compiled programs they share through the cache.
FAST = ["--epochs", "2", "--eval-batch-size", "32"]


def run_example(name, tmp_path, monkeypatch, *argv):
    """The example's main() with `argv`, in `tmp_path`: its runs' final metrics rows, by model."""
    monkeypatch.syspath_prepend(EXAMPLES)
    monkeypatch.chdir(tmp_path)
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        assert importlib.import_module(name).main([*FAST, *argv]) == 0
    finals = {}
    for run in sorted(os.listdir(tmp_path / "runs")):
        with open(tmp_path / "runs" / run / "config.json") as f:
            config = json.load(f)
        with open(tmp_path / "runs" / run / "metrics.jsonl") as f:
            finals[(config["model"], config["optimizer"], config["augment"])] = [
                json.loads(line) for line in f][-1]
    return finals


def test_resnet8_against_the_cnn(tmp_path, monkeypatch):
    finals = run_example("resnet8", tmp_path, monkeypatch)
    assert set(finals) == {("cnn", "adam", ""), ("resnet8:ResNet8", "adam", "")}


def test_lion_against_adam(tmp_path, monkeypatch):
    finals = run_example("lion", tmp_path, monkeypatch)
    assert set(finals) == {("cnn", "adam", ""), ("cnn", "lion:lion", "")}


def test_colour_jitter_on_airbench94(narrow, tmp_path, monkeypatch):
    finals = run_example("colour_jitter", tmp_path, monkeypatch, "--model", "airbench94_narrow",
                         "--batch-size", "32", "--epochs", "2.5")
    assert set(finals) == {
        ("airbench94_narrow", "nesterov", "alternating_flip,translate"),
        ("airbench94_narrow", "nesterov", "alternating_flip,translate,colour_jitter:jitter")}
    for row in finals.values():
        assert "test_accuracy_tta" in row
