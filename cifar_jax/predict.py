"""Predict the class of images with a trained run.

    python -m cifar_jax.predict --workdir runs/cnn-... cat.png plane.jpg [--json]
"""

import json
import sys
import warnings

import jax
import numpy as np
from PIL import Image, UnidentifiedImageError

from cifar_jax import checkpoint, compilation, ops, run, steps
from cifar_jax.cli import OneLineParser, add_model_choice
from cifar_jax.config import ConfigError
from cifar_jax.data import CLASS_NAMES, IMAGE_SHAPE, to_float


def load_run(workdir, member=None, point=None):
    """(config, model, variables) of the newest checkpoint in a training run's `workdir`; of a
    multi-seed run, every model's variables stacked (their ensemble), or model `member`'s; of
    a sweep, those of the point `point` ({setting: value}; default: the best point)."""
    config, state, _ = run.load_state(workdir, member=member, point=point)
    return config, state.model, state.variables


def load_image(path):
    """Any image file PIL reads -> uint8 [32, 32, 3] RGB, resized if it is not 32x32.

    Raises ValueError, with the reason in a few words, for anything PIL refuses: not an image,
    a truncated or damaged file, one larger than PIL's decompression-bomb limit.
    """
    try:
        with warnings.catch_warnings():
            # Up to twice MAX_IMAGE_PIXELS PIL only warns; such an image is read like any other.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image = image.convert("RGB")
            if image.size != IMAGE_SHAPE[:2]:
                image = image.resize(IMAGE_SHAPE[:2], Image.Resampling.BICUBIC)
            return np.asarray(image, np.uint8)
    except UnidentifiedImageError:
        raise ValueError("not an image PIL can read (PNG or JPEG expected)") from None
    except Image.DecompressionBombError:
        raise ValueError(f"too large: over {2 * Image.MAX_IMAGE_PIXELS:,} pixels, PIL's guard "
                         "against decompression bombs") from None
    except OSError as e:
        raise ValueError(e.strerror or str(e)) from None
    except Exception as e:  # noqa: BLE001 - PIL's decoders raise SyntaxError, struct.error, ...
        raise ValueError(f"cannot be decoded ({type(e).__name__}: {e})") from None


def predict_proba(model, variables, images, tta=0, stacked=False):
    """uint8 images [N, 32, 32, 3] -> class probabilities [N, 10], with the test-time
    augmentation `tta` of the run's recipe (`steps.tta_logits`). `stacked`: `variables` hold
    several models along a leading axis, whose mean probabilities (their ensemble) are given."""
    def proba(variables):
        apply = ops.for_backend(model.apply)
        return jax.nn.softmax(steps.tta_logits(apply, variables, to_float(images), tta))

    return np.asarray(jax.jit(lambda v: jax.vmap(proba)(v).mean(0) if stacked else proba(v))(
        variables))


def parse_args(argv=None):
    p = OneLineParser(prog="python -m cifar_jax.predict",
                      description="Print the predicted CIFAR-10 class of each image, with its "
                                  "probability and the top 3 classes, using a trained run.")
    p.add_argument("--workdir", required=True, help="the run folder written by cifar_jax.train")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (PNG, JPEG, any size or mode: converted to 32x32 RGB)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line: path, label, probability, top3")
    add_model_choice(p, "use")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    checkpoint.quiet()
    compilation.enable()
    loaded, failed = [], 0
    for path in args.images:
        try:
            loaded.append((path, load_image(path)))
        except ValueError as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            failed += 1
    try:
        config, model, variables = load_run(args.workdir, args.member, dict(args.point or ()))
    except ConfigError as e:  # a piece of the run that cannot be imported again
        print(f"error: {e}", file=sys.stderr)
        return 2
    except run.RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if loaded:
        probs = predict_proba(model, variables, np.stack([image for _, image in loaded]),
                              config.tta, stacked=config.num_seeds > 1 and args.member is None)
        for (path, _), p in zip(loaded, probs):
            top3 = [(CLASS_NAMES[i], float(p[i])) for i in np.argsort(-p)[:3]]
            label, probability = top3[0]
            if args.json:
                print(json.dumps({"path": path, "label": label, "probability": probability,
                                  "top3": [{"label": c, "probability": q} for c, q in top3]}))
            else:
                print(f"{path}: {label} ({probability:.1%})  top 3: "
                      + ", ".join(f"{c} {q:.1%}" for c, q in top3))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
