"""A sweep of several programs: which compiled programs a run is (`plan`), and training them
in turn (`train_in_turn`), each in a run folder of its own, merging their rows into the sweep's.

Most runs are one program: one model, `--num-seeds` seeds, a sweep of numbers the pieces take as
traced values. A sweep that varies a shape, a model or the batch size is several (`sweep.py`
says how they are made and named); each trains through the same epoch loop as any run
(`train._train`, handed in here so that this module sits below train.py).
"""

import contextlib
import math
import os
from typing import NamedTuple

import jax

from cifar_jax import contracts, evaluate, parallel, report, run, sweep
from cifar_jax.config import Config, ConfigError


class Program(NamedTuple):
    """A program of a sweep of several, as the epoch loop needs to know it: the whole sweep's
    config and folder, the program's static point, its number and how many."""

    sweep: Config
    workdir: str
    static: dict
    index: int
    count: int


def plan(config, n_train=50_000):
    """[(static point, program config)] that `config` trains (`sweep.programs`): one program
    unless the sweep varies a setting the pieces cannot take as a traced value (a shape, a
    model, the batch size: `sweep.may_be_data`, `contracts.untraceable`)."""
    if not config.sweep:
        return [({}, config)]
    maybe = [name for name, _ in config.sweep if sweep.may_be_data(config, name)]
    untraceable = set()
    if maybe:
        for static, program in sweep.programs(config, maybe):
            with named(static):
                untraceable.update(contracts.untraceable(program, n_train))
    return sweep.programs(config, [name for name in maybe if name not in untraceable])


@contextlib.contextmanager
def named(static):
    """A program's contract errors name its point."""
    try:
        yield
    except ConfigError as e:
        if not static:
            raise
        raise type(e)(f"point {sweep.label(static)}: {e}") from None


def train_in_turn(config, workdir, programs, splits, train, progress, stop):
    """The `programs` (`plan`) of a sweep of several, in turn, each trained by `train` (the
    epoch loop, `train._train`) in its folder `sweep.program_dir`; one finished already (a
    resumed sweep) is not trained again. The sweep's metrics.jsonl merges theirs; its reports
    are over all points. Returns the merged rows."""
    is_main_process = parallel.is_main_process()
    histories, predicted = [], {}
    for k, (static, program) in enumerate(programs):
        folder = sweep.program_dir(workdir, k)
        saved = os.path.isfile(os.path.join(folder, "config.json"))
        history = sweep.named(program, run.read_metrics(folder)) if saved else []
        where = f"program {k + 1}/{len(programs)}, {sweep.label(static)}"
        if saved and len(history) == math.ceil(program.epochs):
            if is_main_process:
                print(f"{where}: trained already", flush=True)
        else:
            if saved:
                try:
                    run.check_resumable(program, folder)
                except ConfigError as e:
                    raise run.RunError(f"{where} in {folder} differs from what the sweep trains "
                                       f"now ({e}); start the sweep in a new --workdir") from None
                if is_main_process and program != run.resumed_config(folder):
                    run.write_config(program, folder)  # more epochs, or a new learning rate
            else:
                run.create(program, folder, is_main_process)
            if is_main_process:
                print(f"{where} -> {folder}", flush=True)
            history, predicted[k], *_ = train(program, folder, splits, progress, saved, stop,
                                              Program(config, workdir, static, k, len(programs)))
        histories.append((static, history))
        if is_main_process:
            run.write_metrics(workdir, sweep.merged(config, histories))
    history = sweep.merged(config, histories)
    if is_main_process:
        best = config.points()[sweep.best(sweep.final(history))]
        k = next(k for k, (static, _) in enumerate(programs)
                 if all(best[name] == value for name, value in static.items()))
        if predicted.get(k) is None:  # its program was trained before this resume
            predicted[k] = _predicted(programs[k][1], sweep.program_dir(workdir, k), best,
                                      splits["test"])
        report.write_run_reports(config, workdir, splits["test"][1], predicted[k], history)
    return history


def _predicted(program, folder, point, test_split):
    """The test classes that `program`'s saved models at `point` predict (their ensemble)."""
    local = {name: point[name] for name, _ in program.sweep}
    _, state, _ = run.load_state(folder, point=local)
    mesh = parallel.data_mesh()
    test = evaluate.place_test_set(*test_split, program.eval_batch_size, mesh)
    return evaluate.predicted(jax.device_put(state, parallel.replicated(mesh)), test, program.tta)
