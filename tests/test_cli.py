"""The command lines as a user runs them, through `main()` in this process (exit code, stderr
and stdout are what the process would give); no real data needed."""

import importlib.metadata
import os

import pytest

from cifar_jax.main import main as train_main


def test_train_help_explains_every_flag(capsys):
    code, out, _ = main(capsys, "--help")
    assert code == 0
    for flag in ("--model", "--optimizer", "--learning-rate", "--epochs", "--batch-size", "--seed",
                 "--data-dir", "--no-download", "--workdir", "--keep", "--no-progress", "--loss",
                 "--augment", "--reduction"):
        assert flag in out


def test_every_installed_command_names_a_main():
    commands = {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")
                if ep.value.startswith("cifar_jax.")}
    assert sorted(commands) == ["cifar-jax-evaluate", "cifar-jax-predict", "cifar-jax-train"]
    assert commands["cifar-jax-train"].load() is train_main
    assert all(callable(ep.load()) for ep in commands.values())


def main(capsys, *args):
    """(exit code, stdout, stderr) of `python -m cifar_jax.train ARGS`, with no dataset."""
    try:
        code = train_main(list(args))
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def no_dataset(monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", "/nonexistent-tfds")


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet"], ("error: unknown model 'resnet': choose one of mlp, cnn, airbench94, "
                            "airbench94_muon, cifar10_speedrun, or name yours as "
                            "module:attribute")),
    (["--epochs", "0"], "argument --epochs: must be a positive number, got '0'"),
    (["--epochs", "ten"], "argument --epochs: must be a positive number, got 'ten'"),
    (["--batch-size", "-32"], "argument --batch-size: must be a positive integer, got '-32'"),
    (["--learning-rate", "nan"], "argument --learning-rate: must be a positive number, got 'nan'"),
    (["--optimizer", "rmsprop"], ("error: unknown optimizer 'rmsprop': choose one of sgd, adam, "
                                 "nesterov, muon, or name yours as module:attribute")),
])
def test_bad_flags_get_one_line_and_exit_2(args, message, capsys):
    code, _, err = main(capsys, *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_missing_data_dir_is_one_line_exit_1(tmp_path, capsys):
    code, out, err = main(capsys, "--data-dir", str(tmp_path / "missing"),
                          "--workdir", str(tmp_path / "run"), "--no-progress")
    assert code == 1
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        (f"error: data dir {tmp_path / 'missing'} does not exist: point --data-dir at a folder "
         "holding a prepared TFDS cifar10, or leave it out to download there")]
    cache = os.environ["JAX_COMPILATION_CACHE_DIR"]  # the tests' (conftest), kept as it is
    assert out.splitlines()[0] == f"cpu, 1 device; compilation cache {cache}"
    assert not (tmp_path / "run").exists()  # no half-made run folder to trip over on the rerun


def test_unprepared_data_dir_without_download_exit_1(tmp_path, capsys):
    code, _, err = main(capsys, "--data-dir", str(tmp_path), "--no-download",
                        "--workdir", str(tmp_path / "run"))
    assert code == 1
    assert err.strip() == (f"error: CIFAR-10 is not prepared in {tmp_path}: pass --data-dir "
                           "pointing at a prepared TFDS cifar10 copy, or allow the download")
    assert os.listdir(tmp_path) == []
