"""The command line of `python -m cifar_jax.train`: its flags, made into a `Config`, handed to
`train.train_and_evaluate`; and how each failure ends (one line on stderr, its exit code).

    python -m cifar_jax.train --model cnn        # the tutorial's CNN, Adam, 10 epochs
    python -m cifar_jax.train --model mlp        # the tutorial's MLP, SGD, 5 epochs
"""

import dataclasses
import os
import sys
import time

import jax

from cifar_jax import (
    checkpoint,
    compilation,
    data,
    hugepages,
    parallel,
    run,
    signals,
    stack,
    sweep,
    train,
)
from cifar_jax.cli import (
    SETTINGS_HELP,
    OneLineParser,
    add_config_flags,
    add_piece_help,
    config_overrides,
    help_config,
    split_settings,
)
from cifar_jax.config import Config, ConfigError, check_sweep_flags


def describe_devices():
    """'cpu, 1 device' / 'gpu, 8 devices': the backend and how many devices train."""
    n = jax.device_count()
    return f"{jax.default_backend()}, {n} device{'s' if n != 1 else ''}"


def default_workdir(config):
    """runs/MODEL-DATE-TIME ('module.Class' for an import path), made unique with a suffix."""
    name = f"{config.model.replace(':', '.')}-{time.strftime('%Y%m%d-%H%M%S')}"
    base = os.path.join("runs", name)
    return next(path for path in (base, *(f"{base}-{i}" for i in range(2, 1000)))
                if not os.path.exists(path))


def parse_args(argv=None):
    """(the parsed flags, {KIND.NAME: text} of the pieces' settings given)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = OneLineParser(
        prog="python -m cifar_jax.train",
        description="Train a CIFAR-10 classifier with JAX (the Keras tutorial's MLP or CNN, the "
                    "airbench94 recipes, or your own model, optimiser, augmentation and loss, "
                    "named as module:attribute), evaluate it on the test set after every epoch, "
                    "and write metrics, TensorBoard events, plots and checkpoints to --workdir. "
                    + SETTINGS_HELP)
    add_config_flags(p)
    p.add_argument("--workdir", help="where the run's files go; must be new or empty unless "
                                     "--resume (default: runs/MODEL-DATE-TIME)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --workdir from its newest readable checkpoint, with "
                        "its saved settings; --epochs may extend a run whose schedules do not "
                        "span it, --learning-rate may change (after a divergence, say); any other "
                        "flag that contradicts them is an error")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar, only one line per epoch")
    argv, settings = split_settings(p, argv)
    if {"-h", "--help"} & set(argv):  # list the settings of the pieces the command line names
        try:
            add_piece_help(p, help_config(argv, settings))
        except ConfigError as e:
            p.add_argument_group("settings of the pieces", f"not listed: {e}")
    args = p.parse_args(argv)
    if args.resume and not args.workdir:
        p.error("--resume needs --workdir: the folder of the run to continue")
    return args, settings


def main(argv=None):
    if argv is None:  # the command line itself (`cifar-jax-train`), not a call from Python
        hugepages.restart()
    args, settings = parse_args(argv)
    workdir = args.workdir
    parallel.initialize()
    cache = compilation.enable()
    checkpoint.quiet()
    try:
        overrides = config_overrides(args, settings)
        if args.resume:
            saved = run.resumed_config(workdir)
            given = overrides.pop("settings", {})
            config = dataclasses.replace(saved, **overrides, settings={**saved.settings, **given})
            # a new --learning-rate for a swept one, say
            check_sweep_flags(config.sweep, {**overrides, **given})
        else:
            config = Config.for_model(**overrides)
        workdir = workdir or default_workdir(config)
        print(f"{describe_devices()}; {compilation.describe(cache)}", flush=True)
        with signals.stop_on_signals() as stop:
            history = train.train_and_evaluate(config, workdir, progress=args.progress,
                                               resume=args.resume, stop=stop)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (data.DataError, checkpoint.CheckpointError, run.RunError, train.TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except train.Stopped as e:
        print(e, file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:  # a second signal, or Ctrl-C with no handler (not the main thread)
        print(f"\ninterrupted: every finished epoch is checkpointed in {workdir}; continue with: "
              f"{run.resume_command(workdir)}", file=sys.stderr)
        return 130
    final = history[-1]
    if "points" in final:
        print(f"done: {sweep.verdict(sweep.final(history))}; the table in "
              f"{workdir}/{sweep.CSV_FILE}, the plot in {sweep.PLOT_FILE}")
    elif "per_seed" in final:  # N models: the spread, and the ensemble's accuracy
        key = "test_accuracy_tta" if "test_accuracy_tta" in final else "test_accuracy"
        low, high = final["test_accuracy_ci95"]
        print(f"done: test accuracy{' with TTA' if key.endswith('tta') else ''} "
              f"{stack.describe(final, key)} (mean ± std of {len(final['per_seed'][key])} "
              f"seeds; 95% confidence interval {low:.4f} to {high:.4f}); their ensemble "
              f"{final['ensemble_test_accuracy']:.4f}; files in {workdir}")
    else:
        print(f"done: test accuracy {final['test_accuracy']:.4f}; files in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
