"""Checkpoints, resuming, determinism, and the errors a run can meet on the way."""

import json
import os
import re
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import MOCK_EXAMPLES, cnn_config, trained
from mock_train import cnn_command

from cifar_jax import main, predict, steps
from cifar_jax.config import Config
from cifar_jax.run import lock
from cifar_jax.train import train_and_evaluate


def rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in f]


def same_params(a, b):
    leaves_a = jax.tree.leaves(predict.load_run(a)[2])
    leaves_b = jax.tree.leaves(predict.load_run(b)[2])
    return all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b, strict=True))


def snapshot(folder):
    """Every file below `folder` with its bytes, to show that nothing was touched."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), folder)] = f.read()
    return out


def interrupting(real, at_call=5):
    """`real`, raising KeyboardInterrupt at its `at_call`-th call instead (the 5th: in epoch 2 of
    a mock run, whose epochs take 3 compiled calls)."""
    calls = []

    def wrapped(*args):
        calls.append(1)
        if len(calls) == at_call:
            raise KeyboardInterrupt
        return real(*args)

    return wrapped


def interrupted_then_resumed(config, workdir, monkeypatch):
    """Train the stacked run `config` (`--num-seeds`, `--sweep`) into `workdir`, interrupted
    by KeyboardInterrupt at its compiled loop's 5th call (in epoch 2), then resumed to its end."""
    real = steps.train_batches_stacked
    cut = interrupting(lambda *args: real(len(args[3]))(*args))  # args[3]: the models' batches
    monkeypatch.setattr(steps, "train_batches_stacked", lambda n: cut)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config, workdir, progress=False)
    monkeypatch.setattr(steps, "train_batches_stacked", real)
    train_and_evaluate(config, workdir, progress=False, resume=True)


def test_interrupted_then_resumed_equals_uninterrupted(cnn_run, mock_cifar10, tmp_path, monkeypatch):
    config, whole, _ = cnn_run  # 2 epochs of 3 compiled calls each
    real = steps.train_batches_one
    monkeypatch.setattr(steps, "train_batches_one", interrupting(real))
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config, str(tmp_path / "cut"), progress=False)
    assert len(rows(tmp_path / "cut")) == 1
    assert os.listdir(tmp_path / "cut" / "checkpoints") == ["1"]

    monkeypatch.setattr(steps, "train_batches_one", real)
    history = train_and_evaluate(config, str(tmp_path / "cut"), progress=False, resume=True)
    assert [row["epoch"] for row in history] == [1, 2]
    assert rows(tmp_path / "cut") == rows(whole)
    assert same_params(str(tmp_path / "cut"), whole)


def test_resume_drops_metrics_of_an_epoch_whose_checkpoint_never_landed(cnn_run, mock_cifar10,
                                                                          tmp_path):
    config, finished, _ = cnn_run
    workdir = str(tmp_path / "run")
    shutil.copytree(finished, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "2"))  # died between metrics and checkpoint
    train_and_evaluate(config, workdir, progress=False, resume=True)
    assert rows(workdir) == rows(finished)
    assert same_params(workdir, finished)


def test_keep_limits_the_checkpoints(mock_cifar10, tmp_path):
    config = Config.for_model("cnn", epochs=4, eval_batch_size=32, keep_checkpoints=2)
    train_and_evaluate(config, str(tmp_path), progress=False)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "4"]


def run_cli(capsys, *args):
    code = main.main([*args, "--no-progress"])
    return code, capsys.readouterr().err.strip()


def test_resume_errors_are_one_line_and_touch_nothing(cnn_run, mock_cifar10, tmp_path, capsys):
    _, finished, _ = cnn_run
    run = str(tmp_path / "run")
    shutil.copytree(finished, run)
    with lock(run):  # its lock file names the holder: this process, as below
        before = snapshot(run)
    assert run_cli(capsys, "--workdir", run, "--resume", "--model", "mlp") == (
        2, f"error: {run} was run with model='cnn', not 'mlp': drop that flag to resume the run as it was")
    assert run_cli(capsys, "--workdir", run, "--resume", "--epochs", "1") == (
        2, (f"error: cannot take {run} from 2 to 1 epochs: a run cannot be shortened; drop "
            "--epochs to resume it as it was, or start a new run with --epochs 1"))
    assert run_cli(capsys, "--workdir", run) == (
        2, (f"error: workdir {run} is not empty: choose a new --workdir, or pass --resume to "
            "continue the run in it (nothing in it was changed)"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(capsys, "--workdir", str(empty), "--resume") == (
        2, (f"error: nothing to resume: {empty} holds no cifar_jax run (no config.json); "
            "start the run without --resume"))
    assert snapshot(run) == before


def test_unwritable_workdir_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert run_cli(capsys, "--workdir", str(tmp_path / "file" / "run")) == (
        2, (f"error: cannot write to workdir {tmp_path / 'file' / 'run'} (Not a directory): "
            "choose another --workdir"))


def test_resume_needs_a_workdir(capsys):
    with pytest.raises(SystemExit) as exit_:
        main.parse_args(["--resume"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == ("python -m cifar_jax.train: error: --resume needs "
                                               "--workdir: the folder of the run to continue (see --help)")


def mock_train(workdir):
    """The run `whole` makes, in a process of its own (to be signalled), each of its compiled
    calls (3 an epoch, a step each) starting a quarter of a second late."""
    argv, env = cnn_command(workdir, "--eval-batch-size", "32", epochs=3, examples=MOCK_EXAMPLES,
                            env={"MOCK_CALL_SECONDS": "0.25"})
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def resume_here(workdir, capsys):
    """`mock_train(workdir)` resumed (`--resume`), but in this process (only the victim needs
    one of its own) and at full speed: (exit code, stdout, stderr)."""
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        code = main.main(["--workdir", workdir, "--no-progress", "--resume"])
    out, err = capsys.readouterr()
    return code, out, err


def wait_for_checkpoint(workdir, epoch, proc):
    path = os.path.join(workdir, "checkpoints", str(epoch))
    deadline = time.time() + 120
    while not os.path.isdir(path) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"


@pytest.fixture(scope="session")  # not per module: xdist may interleave modules
def whole(tmp_path_factory):
    """A 3-epoch CNN run, uninterrupted and in-process: the run `mock_train` makes."""
    workdir = str(tmp_path_factory.mktemp("whole") / "run")
    trained(cnn_config(epochs=3), workdir)
    return workdir


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(whole, tmp_path, capsys):
    cut = str(tmp_path / "cut")
    victim = mock_train(cut)
    wait_for_checkpoint(cut, 1, victim)
    time.sleep(0.1)  # into epoch 2
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert len(rows(cut)) < 3
    assert os.path.exists(os.path.join(cut, ".lock"))  # left behind; it must not block --resume

    code, out, err = resume_here(cut, capsys)
    assert code == 0, err
    assert "resuming after epoch" in out
    assert rows(cut) == rows(whole)
    assert same_params(cut, whole)


def test_sigterm_mid_epoch_saves_that_step_and_resume_is_exact(whole, tmp_path, capsys):
    sig = signal.SIGTERM  # SIGINT takes the same handler (test_reliability)
    cut = str(tmp_path / "cut")
    victim = mock_train(cut)
    wait_for_checkpoint(cut, 1, victim)
    time.sleep(0.3)  # into epoch 2, whose 3 steps take 3 late compiled calls
    victim.send_signal(sig)
    _, err = victim.communicate(timeout=60)
    assert victim.returncode == 128 + sig
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"stopped by {sig.name} at epoch [23]/3, step \d+/3: every step is checkpointed; "
        rf"continue with: python -m cifar_jax.train --workdir {re.escape(cut)} --resume", last), last
    assert len(rows(cut)) < 3

    code, _, err = resume_here(cut, capsys)
    assert code == 0, err
    assert rows(cut) == rows(whole)
    assert same_params(cut, whole)
