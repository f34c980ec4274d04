import json

import numpy as np
import pytest
from PIL import Image

from cifar_jax import data, predict
from cifar_jax.data import CLASS_NAMES


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = {
        "rgb.png": Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)),
        "big.jpg": Image.fromarray(rng.integers(0, 256, (60, 100, 3), np.uint8)),
        "grey.png": Image.fromarray(rng.integers(0, 256, (45, 17), np.uint8), mode="L"),
        "alpha.png": Image.fromarray(rng.integers(0, 256, (9, 9, 4), np.uint8), mode="RGBA"),
    }
    for name, image in paths.items():
        image.save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    return {name: str(tmp_path / name) for name in [*paths, "notes.txt"]}


def test_load_image_makes_any_image_32x32_rgb(images):
    for name in ("rgb.png", "big.jpg", "grey.png", "alpha.png"):
        image = predict.load_image(images[name])
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(predict.load_image(images["rgb.png"]),
                                  np.asarray(Image.open(images["rgb.png"])))


def test_predict_prints_label_probability_and_top3(cnn_run, images, capsys):
    _, workdir, _ = cnn_run
    code = predict.main(["--workdir", workdir, images["rgb.png"], images["big.jpg"], images["grey.png"]])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and len(lines) == 3
    for line, name in zip(lines, ("rgb.png", "big.jpg", "grey.png")):
        assert line.startswith(images[name] + ": ")
        assert line.split(": ")[1].split(" (")[0] in CLASS_NAMES
        assert line.count("%") == 4  # the label's probability, then the top 3


def test_predict_json_lines(cnn_run, images, capsys):
    _, workdir, _ = cnn_run
    assert predict.main(["--workdir", workdir, "--json", images["alpha.png"], images["big.jpg"]]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["path"] for row in rows] == [images["alpha.png"], images["big.jpg"]]
    for row in rows:
        assert set(row) == {"path", "label", "probability", "top3"}
        assert row["label"] == row["top3"][0]["label"] and row["label"] in CLASS_NAMES
        probs = [t["probability"] for t in row["top3"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_a_non_image_is_reported_and_the_rest_still_predicted(cnn_run, images, capsys):
    _, workdir, _ = cnn_run
    code = predict.main(["--workdir", workdir, images["notes.txt"], images["rgb.png"],
                         images["rgb.png"] + ".missing"])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.splitlines() == [
        f"error: {images['notes.txt']}: not an image PIL can read (PNG or JPEG expected)",
        f"error: {images['rgb.png']}.missing: No such file or directory"]
    assert out.splitlines()[0].startswith(images["rgb.png"] + ": ")


def test_restored_model_scores_what_training_reported(cnn_run, mock_cifar10):
    _, workdir, history = cnn_run
    _, model, params = predict.load_run(workdir)
    images, labels = data.load_cifar10()["test"]
    accuracy = (predict.predict_proba(model, params, images).argmax(-1) == labels).mean()
    assert accuracy == pytest.approx(history[-1]["test_accuracy"], abs=1e-6)


def test_a_folder_that_is_not_a_run_is_one_line(tmp_path, images, capsys):
    assert predict.main(["--workdir", str(tmp_path), images["rgb.png"]]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path} holds no cifar_jax run (no config.json): "
        "pass the --workdir of a `python -m cifar_jax.train` run")
