"""What a finished run shows a person: the confusion matrix, a per-class report, training curves,
and a sweep's table and plot."""

import os

import numpy as np

from cifar_jax import run, sweep
from cifar_jax.data import CLASS_NAMES

REPORT_FILES = ("confusion_matrix.png", "report.txt")


def write_run_reports(config, workdir, labels, predicted, history):
    """A finished run's reports: the confusion matrix and per-class report of `predicted` (the
    model's, the ensemble's, a sweep's best point's), the history plot; a sweep's table and
    plot. A folder they cannot be written to is a RunError that says how to write them again."""
    try:
        write_reports(workdir, labels, predicted)
        plot_history(history, os.path.join(workdir, "history.png"))
        if config.sweep:
            final = sweep.final(history)
            sweep.write_csv(workdir, config, final)
            plot_sweep(config, final, os.path.join(workdir, sweep.PLOT_FILE))
    except OSError as e:
        raise run.RunError(f"cannot write the reports into {workdir}: {e.strerror.lower()}; "
                           f"every epoch is saved: {run.resume_command(workdir)} writes them "
                           "again") from None


def write_reports(out_dir, labels, predicted):
    """confusion_matrix.png and report.txt (per-class precision, recall, F1) into `out_dir`."""
    counts = confusion_matrix(labels, predicted, len(CLASS_NAMES))
    plot_confusion_matrix(counts, CLASS_NAMES, os.path.join(out_dir, REPORT_FILES[0]))
    with open(os.path.join(out_dir, REPORT_FILES[1]), "w") as f:
        f.write(classification_report(counts, CLASS_NAMES))


def _figure(**kwargs):
    """A matplotlib figure drawn straight to files: no pyplot, no GUI backend. Imported here,
    not at the top: matplotlib takes a third of a second, which a run needs only at its end."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def confusion_matrix(labels, predictions, num_classes):
    """counts[i, j] = how many images of true class i were predicted as class j."""
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(predictions)), 1)
    return counts


def classification_report(counts, class_names):
    """Per-class precision, recall, F1 and support, then accuracy and macro averages, as text."""
    tp = np.diag(counts).astype(float)
    support = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.nan_to_num(tp / counts.sum(axis=0))
        recall = np.nan_to_num(tp / support)
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    width = max(len(n) for n in class_names) + 2
    lines = [f"{'':{width}}precision    recall  f1-score   support", ""]
    for name, p, r, f, s in zip(class_names, precision, recall, f1, support):
        lines.append(f"{name:>{width}}{p:10.4f}{r:10.4f}{f:10.4f}{s:10d}")
    total = int(support.sum())
    lines += ["", f"{'accuracy':>{width}}{'':20}{tp.sum() / total:10.4f}{total:10d}",
              (f"{'macro avg':>{width}}{precision.mean():10.4f}{recall.mean():10.4f}"
               f"{f1.mean():10.4f}{total:10d}")]
    return "\n".join(lines) + "\n"


def plot_confusion_matrix(counts, class_names, path, title="Confusion matrix (test set)"):
    """Counts written in each cell, coloured by the row-normalised rate (recall per class)."""
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = _figure(figsize=(8, 7))
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    ticks = np.arange(len(class_names))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=class_names, yticklabels=class_names,
           xlabel="predicted class", ylabel="true class", title=title)
    ax.tick_params(axis="x", labelrotation=45)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    for i, j in np.ndindex(counts.shape):
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_history(history, path):
    """Loss and accuracy per epoch, train and test, from the rows of metrics.jsonl; for a
    multi-seed run, the mean with a band of ± one std over the seeds; for a sweep, the test
    curves of each point."""
    if "points" in history[0]:
        return _plot_sweep_history(history, path)
    epochs = [row["epoch"] for row in history]
    fig = _figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("loss", "accuracy")):
        for split in ("train", "test"):
            name = f"{split}_{key}"
            mean = np.array([row[name] for row in history])
            (line,) = ax.plot(epochs, mean, marker="o", label=split)
            if f"{name}_std" in history[0]:
                std = np.array([row[f"{name}_std"] for row in history])
                ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        seeds = len(history[0].get("per_seed", {}).get(f"test_{key}", [1]))
        ax.set(xlabel="epoch", ylabel=key,
               title=f"{key}: mean ± std of {seeds} seeds" if seeds > 1 else key)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plot_sweep_history(history, path):
    from cifar_jax.sweep import final, label

    fig = _figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("loss", "accuracy")):
        for point in (entry["point"] for entry in final(history)["points"]):
            name = label(point)  # a program of a sweep may train fewer epochs than another
            rows = [(row["epoch"], entry) for row in history for entry in row["points"]
                    if label(entry["point"]) == name]
            epochs = [epoch for epoch, _ in rows]
            mean = np.array([entry[f"test_{key}"] for _, entry in rows])
            (line,) = ax.plot(epochs, mean, marker="o", label=name)
            if f"test_{key}_std" in rows[0][1]:
                std = np.array([entry[f"test_{key}_std"] for _, entry in rows])
                ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set(xlabel="epoch", ylabel=f"test {key}", title=f"test {key} of each point")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_sweep(config, final, path):
    """sweep.png: the final test accuracy (with TTA where the recipe has it) against each swept
    setting, one panel each, with the 95% interval over the seeds as error bars; one line per
    value of the other swept settings. The learning rate and weight decay on log axes; values
    that are not numbers (models, tuples, lists of augmentations) side by side, in the sweep's
    order."""
    from cifar_jax.sweep import label, score_key, text

    names = [name for name, _ in config.sweep]
    fig = _figure(figsize=(5 * len(names), 4))
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    key = score_key(final["points"][0])
    for ax, (name, swept) in zip(axes, config.sweep):
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in swept)
        position = {value: value if numbers else i for i, value in enumerate(swept)}
        others = [other for other in names if other != name]
        lines = {}  # the other settings' values -> (x, mean, low, high) of each point
        for entry in final["points"]:
            point = entry["point"]
            low, high = entry.get("test_accuracy_ci95", (entry[key], entry[key]))
            lines.setdefault(tuple(point[o] for o in others), []).append(
                (position[point[name]], entry[key], low, high))
        for i, (rest, points) in enumerate(lines.items()):
            x, mean, low, high = map(np.array, zip(*sorted(points)))
            if not numbers:  # side by side, each line a little apart: its error bars show
                x = x + 0.04 * (i - (len(lines) - 1) / 2)
            ax.errorbar(x, mean, yerr=[mean - low, high - mean], marker="o", capsize=3,
                        label=label(dict(zip(others, rest))) or None)
        if numbers and name.rpartition(".")[2] in ("learning_rate", "weight_decay") and all(
                value > 0 for value in swept):
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks([position[value] for value in swept], [text(value) for value in swept])
        seeds = config.num_seeds
        ax.set(xlabel=name, ylabel=key.replace("_", " "),
               title=(f"mean and 95% interval of {seeds} seeds" if seeds > 1 else "one seed"))
        ax.grid(alpha=0.3)
        if others:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
