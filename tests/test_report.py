import numpy as np
import pytest

from cifar_jax import report


def test_confusion_matrix_counts_pairs():
    counts = report.confusion_matrix([0, 0, 1, 2, 2], [0, 1, 1, 2, 0], 3)
    np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 1, 0], [1, 0, 1]])


def test_classification_report_figures():
    counts = np.array([[8, 2], [4, 6]])
    lines = report.classification_report(counts, ["cat", "dog"]).splitlines()
    cat = lines[2].split()
    assert cat == ["cat", "0.6667", "0.8000", "0.7273", "10"]
    assert lines[-2].split() == ["accuracy", "0.7000", "20"]


@pytest.mark.rendered
def test_plots_are_written(tmp_path):
    report.plot_confusion_matrix(np.eye(3, dtype=int) * 5, ["a", "b", "c"], tmp_path / "cm.png")
    rows = [{"epoch": e, "train_loss": 1 / e, "test_loss": 1.1 / e, "train_accuracy": 0.1 * e,
             "test_accuracy": 0.09 * e} for e in (1, 2, 3)]
    report.plot_history(rows, tmp_path / "h.png")
    assert (tmp_path / "cm.png").stat().st_size > 10_000
    assert (tmp_path / "h.png").stat().st_size > 10_000
