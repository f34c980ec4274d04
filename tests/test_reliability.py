"""What clusters and shared machines do to a run: signals, full disks, damaged checkpoints, two
processes on one run, extending a finished run, a diverging loss, and bad images to predict."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import types

import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image
from test_evaluate import scalars
from test_resume import rows, run_cli, same_params, snapshot

from cifar_jax import checkpoint, evaluate, predict, run, signals, steps
from cifar_jax.config import Config
from cifar_jax.train import Stopped, TrainingError, train_and_evaluate


def copy_run(cnn_run, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(cnn_run[1], workdir)
    return workdir


def test_a_stop_mid_epoch_checkpoints_that_step_and_resume_is_exact(cnn_run, mock_cifar10,
                                                                     tmp_path, monkeypatch):
    config, whole, _ = cnn_run  # 2 epochs of 3 compiled calls each
    stop, calls, real = signals.Stop(), [], steps.train_batches_one

    def signal_in_epoch_2(*args):
        calls.append(1)
        if len(calls) == 5:  # epoch 2's second call: the stop is seen before its third
            stop.signum = signal.SIGTERM
        return real(*args)

    monkeypatch.setattr(steps, "train_batches_one", signal_in_epoch_2)
    cut = str(tmp_path / "cut")
    with pytest.raises(Stopped) as stopped:
        train_and_evaluate(config, cut, progress=False, stop=stop)
    assert str(stopped.value) == (
        f"stopped by SIGTERM at epoch 2/2, step 2/3: every step is checkpointed; continue with: "
        f"python -m cifar_jax.train --workdir {cut} --resume")
    assert stopped.value.signum == signal.SIGTERM
    assert len(rows(cut)) == 1
    assert os.listdir(os.path.join(cut, "interrupted")) == ["5"]  # the train step: 3 + 2

    monkeypatch.setattr(steps, "train_batches_one", real)
    train_and_evaluate(config, cut, progress=False, resume=True)
    assert rows(cut) == rows(whole)  # epoch 2's train loss counts the steps before the stop too
    assert same_params(cut, whole)
    assert not os.listdir(os.path.join(cut, "interrupted"))  # superseded by epoch 2's checkpoint


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_checkpoint_write_is_one_line_and_resume_is_exact(cnn_run, mock_cifar10,
                                                                    tmp_path, monkeypatch, capsys):
    whole = cnn_run[1]
    workdir = str(tmp_path / "run")
    real_save = ocp.CheckpointManager.save

    def fail_on_epoch_2(self, step, *args, **kwargs):
        if step == 2:
            no_space()
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", fail_on_epoch_2)
    code, err = run_cli(capsys, "--workdir", workdir, "--model", "cnn", "--epochs", "2",
                        "--eval-batch-size", "32")
    assert (code, err) == (1, (
        f"error: cannot write checkpoint {os.path.join(workdir, 'checkpoints', '2')}: no space "
        f"left on device; the run stopped there: fix that, then continue with: python -m "
        f"cifar_jax.train --workdir {workdir} --resume"))
    assert [row["epoch"] for row in rows(workdir)] == [1]  # never an epoch without its checkpoint
    assert [step for step, _ in scalars(workdir)["test/accuracy"]] == [1]

    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    assert run_cli(capsys, "--workdir", workdir, "--resume") == (0, "")
    assert rows(workdir) == rows(whole)
    assert same_params(workdir, whole)


def test_a_failed_metrics_write_is_one_line(mock_cifar10, tmp_path, monkeypatch, capsys):
    workdir = str(tmp_path / "run")

    def open_(path, *args, **kwargs):
        return (no_space if path.endswith("metrics.jsonl.tmp") else open)(path, *args, **kwargs)

    monkeypatch.setattr(run, "open", open_, raising=False)  # run.py's writes only
    code, err = run_cli(capsys, "--workdir", workdir, "--model", "mlp", "--epochs", "1")
    assert (code, err) == (1, (
        f"error: cannot write {workdir}/metrics.jsonl: no space left on device; the run stopped "
        f"there: fix that, then continue with: python -m cifar_jax.train --workdir {workdir} "
        "--resume"))
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "1"))


def test_the_cause_of_a_tensorstore_write_error_is_the_os_reason():
    # What Orbax raised when a 3 MB tmpfs filled up (shortened).
    error = ValueError('RESOURCE_EXHAUSTED: Error writing "params.Dense_0.kernel/0.0" in OCDBT '
                       'database at local file "/tmp/small/run/checkpoints/2.orbax-checkpoint-tmp/":'
                       " Failed to write 47281 bytes to file 17: No space left on device "
                       "[os_error_code='28']")
    assert checkpoint.describe(error) == "no space left on device"
    truncated = ValueError('OUT_OF_RANGE: Error reading "params.Conv_1.kernel/0.0.0.0" in OCDBT '
                           "database: Requested byte range [546595, 614142) is not valid for "
                           "value of size 1000")
    try:
        raise RuntimeError("Encountered error while reading array index") from truncated
    except RuntimeError as e:
        assert checkpoint.describe(e) == "a file in it is truncated"
    # A metadata file of garbage: Orbax's JSONDecodeError, raised while handling a StopIteration
    try:
        try:
            next(iter(()))
        except StopIteration:
            json.loads("garbage")
    except ValueError as e:
        assert checkpoint.describe(e) == "a file in it is damaged"


def warning(path):
    return re.compile(rf"warning: skipped checkpoint {re.escape(path)}: cannot be read \(.+\)")


def test_resume_skips_an_unreadable_checkpoint_and_is_exact(cnn_run, damaged_run, mock_cifar10,
                                                            capsys):
    workdir, newest = damaged_run  # epoch 2's files are garbage
    code, err = run_cli(capsys, "--workdir", workdir, "--resume")
    assert code == 0
    assert warning(newest).fullmatch(err), err
    assert rows(workdir) == rows(cnn_run[1])
    assert same_params(workdir, cnn_run[1])


def test_predict_and_evaluate_skip_an_unreadable_checkpoint(damaged_run, mock_cifar10, tmp_path,
                                                            capsys):
    workdir, newest = damaged_run
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    assert predict.main(["--workdir", workdir, str(tmp_path / "x.png")]) == 0
    captured = capsys.readouterr()
    assert warning(newest).fullmatch(captured.err.strip())
    assert captured.out.startswith(f"{tmp_path / 'x.png'}: ")
    assert evaluate.main(["--workdir", workdir, "--json"]) == 0
    captured = capsys.readouterr()
    assert warning(newest).fullmatch(captured.err.strip())
    assert '"epoch": 1' in captured.out


def test_a_damaged_checkpoint_prints_nothing_from_orbax_in_a_fresh_process(damaged_run, tmp_path):
    workdir, newest = damaged_run
    for name in os.listdir(os.path.join(workdir, "checkpoints", "1")):  # now none can be read
        path = os.path.join(workdir, "checkpoints", "1", name)
        if os.path.isdir(path):
            shutil.rmtree(path)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    proc = subprocess.run([sys.executable, "-m", "cifar_jax.predict", "--workdir", workdir,
                           str(tmp_path / "x.png")], capture_output=True, text=True, timeout=120,
                          check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1
    assert len(lines) == 3, proc.stderr  # two warnings, one error
    assert warning(newest).fullmatch(lines[0])
    assert lines[2] == (f"error: no checkpoint in {os.path.join(workdir, 'checkpoints')} can be "
                        "read: start the run again in a new --workdir")


def test_reading_a_truncated_checkpoint_again_and_again_leaves_nothing_at_exit(cnn_run, tmp_path):
    """Orbax's reads of a truncated array file fail while some are in flight: 20 failed reads
    and a predict in one fresh process, and its stderr holds our one warning, nothing from
    asyncio or Orbax at the interpreter's exit ("coroutine ... was never awaited")."""
    workdir = copy_run(cnn_run, tmp_path)
    newest = os.path.join(workdir, "checkpoints", "2")
    for root, _, files in os.walk(newest):
        for name in files:
            if os.sep + "d" + os.sep in os.path.join(root, name) + os.sep:  # the arrays' data
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(os.path.getsize(os.path.join(root, name)) // 2)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    code = f"""
import jax
from cifar_jax import checkpoint, predict, train_state
from cifar_jax.config import Config
checkpoint.quiet()
like = train_state.from_config(Config.load({workdir!r}), jax.random.key(0))
for _ in range(20):
    mngr = checkpoint.manager({workdir!r}, read_only=True)
    try:
        checkpoint.restore(mngr, like, step=2)
    except checkpoint.CheckpointError as e:
        assert "a file in it is truncated" in str(e), e
    mngr.close()
predict.main(["--workdir", {workdir!r}, {str(tmp_path / "x.png")!r}])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert warning(newest).fullmatch(proc.stderr.strip()), proc.stderr


def test_a_second_process_on_a_run_is_refused_naming_the_first(cnn_run, mock_cifar10, tmp_path,
                                                               capsys):
    workdir = copy_run(cnn_run, tmp_path)
    with run.lock(workdir):  # its lock file names the holder: this process, as below
        before = snapshot(workdir)
    fresh = str(tmp_path / "fresh")
    # a resume, a fresh start in an empty folder, one in the folder the holder is filling
    for folder, args in ((workdir, ["--resume"]), (fresh, []), (workdir, [])):
        with run.lock(folder):  # this test's process holds the run
            code, err = run_cli(capsys, "--workdir", folder, *args)
        assert (code, err) == (1, (
            f"error: {folder} is in use by process {os.getpid()} on {os.uname().nodename}: wait "
            "until it ends, or choose another --workdir"))
    assert snapshot(workdir) == before
    assert os.listdir(fresh) == [".lock"]
    # the lock is gone with the process that held it; its file does not block a fresh start
    assert run_cli(capsys, "--workdir", fresh, "--model", "mlp", "--epochs", "1")[0] == 0


def test_resume_with_more_epochs_equals_a_longer_run(cnn_run, mock_cifar10, tmp_path, capsys):
    workdir = copy_run(cnn_run, tmp_path)
    assert run_cli(capsys, "--workdir", workdir, "--resume", "--epochs", "3") == (0, "")
    longer = str(tmp_path / "longer")
    train_and_evaluate(Config.for_model("cnn", epochs=3, eval_batch_size=32), longer,
                       progress=False)
    assert rows(workdir) == rows(longer)
    assert same_params(workdir, longer)
    assert Config.load(workdir).epochs == 3


@pytest.mark.parametrize("model, epochs, why", [
    ("airbench94", 2, "its warmup_decay schedule and lookahead span the whole run"),
    ("cnn", 1.5, "it ends part-way through epoch 2"),
])
def test_extending_is_refused_where_the_recipe_ties_its_length(model, epochs, why, tmp_path,
                                                               capsys):
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    run.write_config(Config.for_model(model, epochs=epochs), workdir)
    assert run_cli(capsys, "--workdir", workdir, "--resume", "--epochs", "4") == (2, (
        f"error: cannot take {workdir} from {epochs:g} to 4 epochs: {why}; drop --epochs to resume "
        "it as it was, or start a new run with --epochs 4"))
    assert "training" not in capsys.readouterr().out


def test_an_exploding_loss_stops_the_run_and_its_advice_works(mock_cifar10, tmp_path, capsys):
    workdir = str(tmp_path / "run")
    code, err = run_cli(capsys, "--workdir", workdir, "--model", "mlp", "--epochs", "2",
                        "--learning-rate", "1e6")
    assert code == 1
    # SGD at 1e6 drives the loss to 1e19, not to NaN: caught all the same
    match = re.fullmatch(r"error: loss reached \S+ \(over 100 x ln 10\) at epoch 1/2, step 2/3: "
                         r"no epoch had finished; to start again with a lower learning rate: "
                         r"(python -m cifar_jax.train .*)", err)
    assert match, err
    assert match.group(1) == (f"python -m cifar_jax.train --workdir {workdir} --resume "
                              "--learning-rate 100000")
    assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))
    # the advice, as written but for a sane learning rate, starts the run again from step 0
    assert run_cli(capsys, "--workdir", workdir, "--resume", "--learning-rate", "0.01") == (0, "")
    fresh = str(tmp_path / "fresh")
    train_and_evaluate(Config.for_model("mlp", epochs=2), fresh, progress=False)
    assert rows(workdir) == rows(fresh)


def test_a_nan_loss_names_its_step(mock_cifar10, tmp_path, monkeypatch):
    real = steps.train_batches_one

    def nan_at_step_5(state, *args):  # one step per call: 3 batches, 20 calls at most
        state, metrics = real(state, *args)
        if int(state.step[0]) == 5:  # a stack of one model
            metrics = {**metrics, "first_diverged": np.array([0], np.int32),
                       "diverged_loss": np.array([np.nan], np.float32)}
        return state, metrics

    monkeypatch.setattr(steps, "train_batches_one", nan_at_step_5)
    with pytest.raises(TrainingError, match=r"^loss became nan at epoch 2/2, step 2/3: the "
                       r"checkpoints before it are kept; to go on from the newest with a lower "
                       r"learning rate: python -m cifar_jax.train --workdir \S+ --resume "
                       r"--learning-rate 0.0001$"):
        train_and_evaluate(Config.for_model("cnn", epochs=2, eval_batch_size=32),
                           str(tmp_path), progress=False)
    assert [row["epoch"] for row in rows(tmp_path)] == [1]


def test_predict_answers_each_bad_image_and_predicts_the_rest(cnn_run, tmp_path, monkeypatch,
                                                              capsys):
    good, huge, cut = tmp_path / "good.png", tmp_path / "huge.png", tmp_path / "cut.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(good)
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(huge)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)).save(cut)
    cut.write_bytes(cut.read_bytes()[:1000])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # 100x100 is over twice that: refused
    code = predict.main(["--workdir", cnn_run[1], str(huge), str(cut), str(good)])
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert code == 1 and len(errors) == 2
    assert errors[0] == (f"error: {huge}: too large: over 8,000 pixels, PIL's guard against "
                         "decompression bombs")
    assert errors[1].startswith(f"error: {cut}: ")
    assert captured.out.startswith(f"{good}: ") and len(captured.out.splitlines()) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_on_signals_sets_stop_then_a_second_signal_interrupts(sig):
    before = signal.getsignal(sig)
    with signals.stop_on_signals() as stop:
        assert not stop
        os.kill(os.getpid(), sig)
        assert stop and stop.name == sig.name and stop.signum == sig
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), sig)
    assert signal.getsignal(sig) is before


def test_quiet_drops_only_what_abandoned_reads_leave(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    checkpoint.quiet()

    def unraisable(error, obj=None):
        try:
            raise error
        except RuntimeError as e:
            sys.unraisablehook(types.SimpleNamespace(exc_type=type(e), exc_value=e,
                                                     exc_traceback=e.__traceback__, object=obj,
                                                     err_msg=None))

    async def read():
        pass

    coroutine = read()
    unraisable(RuntimeError("Event loop is closed"))  # TensorStore's callback, loop gone
    unraisable(RuntimeError("read failed"), coroutine)  # a coroutine nobody awaited
    coroutine.close()
    real = RuntimeError("something else")
    unraisable(real)
    assert seen == [real]
