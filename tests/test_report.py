import numpy as np
import pytest

from cifar_jax import report, run
from cifar_jax.config import Config


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


def test_reports_that_cannot_be_written_say_how_to_write_them_again(tmp_path):
    (tmp_path / report.REPORT_FILES[1]).mkdir()  # report.txt cannot be opened for writing
    labels = np.arange(10) % 10
    with pytest.raises(run.RunError) as error:
        report.write_run_reports(Config(), str(tmp_path), labels, labels, [])
    assert str(error.value) == (f"cannot write the reports into {tmp_path}: is a directory; every "
                                f"epoch is saved: {run.resume_command(str(tmp_path))} writes them "
                                "again")
