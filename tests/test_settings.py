"""Every setting of every piece, as a researcher sets it: a model, optimiser, loss and augmentation
of a module outside the package, their own settings on the command line (--model.width 4,
--optimizer.b2 0.95, ...), listed by --help, swept in one program where the step takes them as
numbers and a program per value where not (a width), resumed, evaluated and predicted with; run
folders of the version before pieces had settings; each bad input as one line."""

import csv
import json
import os

import numpy as np
import pytest
from conftest import FLAGS
from PIL import Image
from test_cli import main
from test_resume import interrupting, rows, snapshot

from cifar_jax import evaluate, predict, programs, run, steps, sweep, train
from cifar_jax.config import Config
from cifar_jax.main import parse_args


def test_help_lists_the_chosen_pieces_settings_with_their_defaults(mypieces, capsys):
    code, out, _ = main(capsys, *FLAGS, "--help")
    assert code == 0
    text = " ".join(out.split())  # argparse wraps the lines
    for section, flag, what in (
            ("the model 'mypieces:Tiny'", "--model.width INT", "an integer (default: 8)"),
            ("the optimizer 'mypieces:lion'", "--optimizer.b2 FLOAT", "a number (default: 0.99)"),
            ("the loss 'mypieces:focal'", "--loss.gamma FLOAT", "a number (default: 2)"),
            ("the augmentation 'mypieces:gray'", "--augment.mypieces:gray.strength FLOAT",
             "a number (default: 1)")):
        assert f"settings of {section}" in text and f"{flag} {what}" in text
    assert "settings of the augmentation 'flip': none" in text
    # a built-in recipe's, with what the recipe sets
    code, out, _ = main(capsys, "--model", "airbench94", "--help")
    text = " ".join(out.split())
    assert "--model.widths INT,... comma-separated integers (default: 64,256,256)" in text
    assert "--loss.label_smoothing FLOAT a number (default: 0; this run: 0.2)" in text
    assert "--augment.translate.pad INT an integer (default: 2)" in text


def test_help_lists_an_optax_optimisers_settings_and_says_why_it_cannot(capsys):
    # optax.adamw has no default learning rate: the help lists its settings all the same, with
    # those the command line gives
    code, out, _ = main(capsys, "--optimizer", "optax:adamw", "--optimizer.b2", "0.95", "--help")
    text = " ".join(out.split())
    assert code == 0
    assert "--optimizer.b2 FLOAT a number (default: 0.999; this run: 0.95)" in text
    assert "--optimizer.weight_decay FLOAT a number (default: 0.0001)" in text
    code, out, _ = main(capsys, "--optimizer.bogus", "3", "--help")
    text = " ".join(out.split())
    assert code == 0
    assert ("settings of the pieces: not listed: optimizer.bogus: optimizer 'adam' has no "
            "setting 'bogus'; it has no settings") in text


def test_a_users_pieces_take_their_settings_from_the_command_line(mypieces, mock_cifar10, tmp_path,
                                                                  capsys):
    workdir = str(tmp_path / "run")
    code, out, err = main(capsys, *FLAGS, "--epochs", "1", "--no-progress", "--workdir", workdir,
                          "--model.width", "4", "--optimizer.b2", "0.95", "--loss.gamma=1",
                          "--augment.gray.strength", "0.5", "--weight-decay", "0.01")
    assert code == 0, err
    assert ("training mypieces:Tiny (mypieces:lion, lr 0.0003, "
            "augment.mypieces:gray.strength=0.5, loss.gamma=1, model.width=4, optimizer.b2=0.95, "
            f"optimizer.weight_decay=0.01, 1 epoch, batch 32, float32) -> {workdir}") in out
    saved = json.loads(open(os.path.join(workdir, "config.json")).read())
    assert saved["settings"] == {"augment.mypieces:gray.strength": 0.5, "loss.gamma": 1.0,
                                 "model.width": 4, "optimizer.b2": 0.95,
                                 "optimizer.weight_decay": 0.01}
    _, state, _ = run.load_state(workdir)
    assert state.model.width == 4 and state.params["Conv_0"]["kernel"].shape[-1] == 4
    code, _, err = main(capsys, "--workdir", workdir, "--resume", "--optimizer.b2", "0.9")
    assert (code, err) == (2, f"error: {workdir} was run with optimizer.b2 0.95, not 0.9: drop "
                              "that flag to resume the run as it was\n")
    assert evaluate.main(["--workdir", workdir, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == rows(workdir)[0]["test_accuracy"]


@pytest.mark.parametrize("flags, message", [
    (["--optimizer.nosuch", "1"], ("error: optimizer.nosuch: optimizer 'mypieces:lion' has no "
                                   "setting 'nosuch'; its settings are b1, b2, weight_decay")),
    (["--model.width", "1.5"], "error: model.width must be an integer, got '1.5'"),
    (["--optimizer.b2", "abc"], "error: optimizer.b2 must be a number, got 'abc'"),
    (["--model.features", "64,x"], ("error: model.features: model 'mypieces:Tiny' has no setting "
                                    "'features'; its settings are width")),
    (["--augment.cutout.size", "4"], ("error: augment.cutout.size: 'cutout' is not among the run's "
                                      "augmentations (flip, mypieces:gray): add it to --augment, "
                                      "or drop the setting")),
    (["--sweep", "optimizer.b2=0.9,0.99", "--optimizer.b2", "0.95"], (
        "error: --sweep optimizer.b2 and --optimizer.b2 both set optimizer.b2: drop one")),
    (["--sweep", "optimizer.b2="], ("error: --sweep optimizer.b2 has no values: give them as "
                                    "optimizer.b2=V1,V2,...")),
    (["--sweep", "model.width=4,4"], ("error: --sweep model.width lists 4 twice: give each "
                                      "value once")),
    (["--weight-decay", "0.1", "--optimizer.weight_decay", "0.2"], (
        "error: --weight-decay and --optimizer.weight_decay both set optimizer.weight_decay: give "
        "one")),
    (["--model.width"], ("python -m cifar_jax.train: error: argument --model.width: expected a "
                         "value (see --help)")),
    (["--translate-pad", "3"], ("python -m cifar_jax.train: error: --translate-pad is a setting of "
                                "its piece now: --augment.translate.pad (see --help)")),
])
def test_a_bad_setting_is_one_line_exit_2_and_nothing_written(flags, message, mypieces, tmp_path,
                                                               capsys):
    workdir = tmp_path / "run"
    code, _, err = main(capsys, *FLAGS, "--workdir", str(workdir), *flags)
    assert (code, err) == (2, message + "\n")
    assert not workdir.exists()


def test_a_users_optimiser_setting_sweeps_in_one_program_each_point_its_own_run(
        mypieces, mock_cifar10, tmp_path, capsys):
    argv = [*FLAGS, "--epochs", "1", "--no-progress"]
    code, out, err = main(capsys, *argv, "--workdir", str(tmp_path / "sweep"),
                          "--sweep", "optimizer.b2=0.9,0.99")
    assert code == 0, err
    assert "sweep: 2 points x 1 seed = 2 models in one compiled program" in out
    code, _, err = main(capsys, *argv, "--workdir", str(tmp_path / "alone"),
                        "--optimizer.b2", "0.9")
    assert code == 0, err
    swept, alone = rows(tmp_path / "sweep")[0]["points"][0], rows(tmp_path / "alone")[0]
    assert swept["point"] == {"optimizer.b2": 0.9}
    for key in ("train_loss", "train_accuracy"):  # on one CPU the models train in turn: bit-equal
        assert swept[key] == alone[key]


@pytest.fixture
def width_sweep(mypieces, mock_cifar10, tmp_path, capsys):
    """A 2-epoch sweep of the Tiny model's width x the learning rate x 2 seeds: 2 programs (one
    per width) of 4 models, (argv, workdir, stdout)."""
    argv = [*FLAGS, "--epochs", "2", "--no-progress", "--num-seeds", "2",
            "--sweep", "model.width=4,8", "--sweep", "learning_rate=1e-3,2e-3"]
    workdir = str(tmp_path / "whole")
    code, out, err = main(capsys, *argv, "--workdir", workdir)
    assert code == 0, err
    return argv, workdir, out


def test_a_width_sweep_trains_a_program_per_width(width_sweep, mypieces, mock_cifar10, tmp_path,
                                                  capsys):
    argv, workdir, out = width_sweep
    assert ("sweep: 4 points x 2 seeds = 8 models in 2 compiled programs of 4 (a program per "
            "model.width; learning_rate within each)") in out
    assert f"program 2/2, model.width=8 -> {workdir}/programs/2" in out
    history = rows(workdir)
    assert [[entry["point"] for entry in row["points"]] for row in history] == [[
        {"model.width": 4, "learning_rate": 0.001}, {"model.width": 4, "learning_rate": 0.002},
        {"model.width": 8, "learning_rate": 0.001}, {"model.width": 8, "learning_rate": 0.002}]] * 2
    with open(os.path.join(workdir, "sweep.csv")) as f:
        table = list(csv.reader(f))
    assert [line[:2] for line in table] == [["model.width", "learning_rate"], ["4", "0.001"],
                                            ["4", "0.002"], ["8", "0.001"], ["8", "0.002"]]
    assert sorted(os.listdir(os.path.join(workdir, "tensorboard"))) == [
        "model.width=4,learning_rate=0.001", "model.width=4,learning_rate=0.002",
        "model.width=8,learning_rate=0.001", "model.width=8,learning_rate=0.002"]
    for name in ("sweep.png", "history.png", "confusion_matrix.png", "report.txt"):
        assert os.path.isfile(os.path.join(workdir, name))
    assert f"done: {sweep.verdict(sweep.final(rows(workdir)))}" in out
    # each point and seed is its own run: width 8, lr 0.002, seed 1
    code, _, err = main(capsys, *FLAGS, "--epochs", "2", "--no-progress", "--model.width", "8",
                        "--learning-rate", "0.002", "--seed", "1",
                        "--workdir", str(tmp_path / "alone"))
    assert code == 0, err
    for epoch, alone in enumerate(rows(tmp_path / "alone")):
        entry = history[epoch]["points"][3]
        for key in ("train_loss", "train_accuracy"):
            assert entry["per_seed"][key][1] == alone[key]
    # evaluate and predict any point
    assert evaluate.main(["--workdir", workdir, "--json", "--point", "model.width=8",
                          "--point", "learning_rate=0.002", "--member", "1"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["point"] == {"model.width": 8, "learning_rate": 0.002}
    assert evaluated["test_accuracy"] == history[-1]["points"][3]["per_seed"]["test_accuracy"][1]
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    assert predict.main(["--workdir", workdir, str(tmp_path / "x.png"), "--json",
                         "--point", "model.width=4", "--point", "learning_rate=0.001"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == str(tmp_path / "x.png")


def test_a_sweep_of_programs_resumes_exactly_without_training_a_finished_one_again(
        width_sweep, mypieces, mock_cifar10, tmp_path, capsys, monkeypatch):
    argv, whole, _ = width_sweep
    cut = str(tmp_path / "cut")
    real = steps.train_batches_stacked
    # each program: 2 epochs of 3 compiled calls; the 10th is in program 2's second epoch
    cut_short = interrupting(lambda *args: real(len(args[3]))(*args), 10)
    monkeypatch.setattr(steps, "train_batches_stacked", lambda n: cut_short)
    code, _, _ = main(capsys, *argv, "--workdir", cut)
    assert code == 130
    assert len(rows(os.path.join(cut, "programs", "2"))) == 1
    before = snapshot(os.path.join(cut, "programs", "1"))
    monkeypatch.setattr(steps, "train_batches_stacked", real)
    code, out, err = main(capsys, "--workdir", cut, "--resume", "--no-progress")
    assert code == 0, err
    assert "program 1/2, model.width=4: trained already" in out
    assert "resuming after epoch 1" in out
    assert rows(cut) == rows(whole)
    assert snapshot(os.path.join(cut, "programs", "1")) == before


def test_a_finished_sweep_of_tuples_resumed_writes_its_reports_again(mock_cifar10, tmp_path,
                                                                      capsys):
    """The points read back from metrics.jsonl hold their tuples as tuples (JSON wrote lists)."""
    workdir = str(tmp_path / "run")
    argv = ["--model", "cnn", "--epochs", "1", "--no-progress", "--eval-batch-size", "32",
            "--sweep", "model.features=4,4;8,8"]
    code, _, err = main(capsys, *argv, "--workdir", workdir)
    assert code == 0, err
    os.remove(os.path.join(workdir, "sweep.csv"))
    code, out, err = main(capsys, "--workdir", workdir, "--resume", "--no-progress")
    assert code == 0, err
    assert out.count("trained already") == 2
    assert run.read_metrics(workdir)[0]["points"][1]["point"] == {"model.features": (8, 8)}
    with open(os.path.join(workdir, "sweep.csv")) as f:
        assert [line[0] for line in csv.reader(f)] == ["model.features", "4,4", "8,8"]


@pytest.mark.parametrize("sweep_, static, data", [
    ({"batch_size": [16, 32]}, [{"batch_size": 16}, {"batch_size": 32}], []),
    ({"model": ["cnn", "mlp"], "learning_rate": [1e-3, 2e-3]}, [{"model": "cnn"}, {"model": "mlp"}],
     ["learning_rate"]),
    ({"augment": ["flip", "flip,translate"], "loss.label_smoothing": [0.0, 0.1]},
     [{"augment": "flip"}, {"augment": "flip,translate"}], ["loss.label_smoothing"]),
    ({"epochs": [1, 2]}, [{"epochs": 1.0}, {"epochs": 2.0}], []),
    ({"augment.translate.pad": [1, 2]}, None, None),  # below: needs translate in the run
])
def test_a_sweep_can_vary_anything(sweep_, static, data):
    if static is None:
        config = Config.for_model("cnn", augment="translate", sweep=sweep_)
        static, data = [{"augment.translate.pad": 1}, {"augment.translate.pad": 2}], []
    else:
        config = Config.for_model("cnn", sweep=sweep_)
    plan = programs.plan(config)
    assert [point for point, _ in plan] == static
    assert all([name for name, _ in program.sweep] == data for _, program in plan)
    for point, program in plan:  # each program is its run at its static values
        for name, value in point.items():
            assert program.value(name) == value
    if "model" in sweep_:  # the recipe is --model's (cnn's: adam), the network swept
        assert [(p.model, p.optimizer, p.learning_rate) for _, p in plan] == [
            ("cnn", "adam", None), ("mlp", "adam", None)]


def test_values_that_hold_commas_are_separated_by_semicolons(capsys):
    args, _ = parse_args(["--sweep", "model.features=16,32;32,64", "--sweep",
                                "augment=;flip,translate"])
    config = Config.for_model("cnn", sweep=args.sweep)
    assert config.sweep == (("model.features", ((16, 32), (32, 64))),
                            ("augment", ("", "flip,translate")))
    assert [sweep.label(point) for point in config.points()][:2] == [
        "model.features=(16,32),augment=", "model.features=(16,32),augment=(flip,translate)"]


# config.json of a sweep run by the version before the pieces had settings (`momentum` was
# Config's field, translate's pad `translate_pad`), as that version wrote it
BEFORE = {"model": "cnn", "optimizer": "sgd", "learning_rate": 0.01, "epochs": 1, "batch_size": 32,
          "drop_last": False, "loss": "cross_entropy", "reduction": "mean", "label_smoothing": 0.1,
          "schedule": "constant", "momentum": None, "weight_decay": None, "bias_scaler": None,
          "whiten_bias_epochs": None, "bias_lr": None, "head_lr": None, "lookahead": False,
          "augment": "flip,translate", "translate_pad": 3, "cutout_size": None, "tta": 0,
          "eval_batch_size": 32, "dtype": "float32", "seed": 0, "num_seeds": 1,
          "sweep": [["momentum", [0.5, 0.9]]], "data_dir": None, "archive": None,
          "download": True, "keep_checkpoints": 3}


def test_a_run_folder_of_the_version_before_resumes_evaluates_and_predicts(mock_cifar10, tmp_path,
                                                                           capsys):
    """Its checkpoints have the layout this version writes (checked once against that version's
    own folder, 2026-12-03: resumed here, it equalled this version's uninterrupted run); its
    config.json and its metrics' point names are as that version wrote them."""
    config = Config.from_json(json.dumps(BEFORE))
    assert config.settings == {"augment.translate.pad": 3, "loss.label_smoothing": 0.1}
    assert config.sweep == (("optimizer.momentum", (0.5, 0.9)),)
    old, whole = str(tmp_path / "old"), str(tmp_path / "whole")
    train.train_and_evaluate(config, old, progress=False)
    with open(os.path.join(old, "config.json"), "w") as f:
        json.dump(BEFORE, f)
    history = rows(old)
    for row in history:
        for entry in row["points"]:
            entry["point"] = {"momentum": entry["point"]["optimizer.momentum"]}
    with open(os.path.join(old, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in history)
    capsys.readouterr()
    assert evaluate.main(["--workdir", old, "--json", "--point", "momentum=0.9"]) == 0
    assert json.loads(capsys.readouterr().out)["point"] == {"optimizer.momentum": 0.9}
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    assert predict.main(["--workdir", old, str(tmp_path / "x.png")]) == 0
    code, _, err = main(capsys, "--workdir", old, "--resume", "--epochs", "2", "--no-progress")
    assert code == 0, err
    train.train_and_evaluate(Config.from_json(json.dumps({**BEFORE, "epochs": 2})), whole,
                             progress=False)
    assert rows(old) == rows(whole)
