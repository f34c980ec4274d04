"""cifar_jax.augment against plain numpy references, exact equality.

Each check jits one function that returns the augmented uint8 and float32 batches together with
the draws the op made (the `_..._mask/_offsets/_centres` helpers it uses itself), so a test
costs one compilation; most share one batch shape.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax import augment as aug
from cifar_jax.config import REGISTRY, ExtensionError
from cifar_jax.data import CIFAR_MEAN, CIFAR_STD

KEY = jax.random.key(0)
B = 512  # big enough for the statistical checks, small enough for numpy loops


def _images(batch=B, h=32, w=32, c=3, seed=0):
    """uint8 and float32 copies of non-zero pixels (a zeroed or misplaced pixel shows)."""
    x = np.random.default_rng(seed).integers(1, 256, (batch, h, w, c))
    return x.astype(np.uint8), x.astype(np.float32)


def _check_both(outs, x8, x32, ref):
    """outs[:2] are the op applied to x8 and x32; ref(x) the numpy reference."""
    for x, y in zip((x8, x32), outs[:2]):
        assert y.dtype == x.dtype and y.shape == x.shape
        np.testing.assert_array_equal(np.asarray(y), ref(x))


def _np_flip(x, mask):
    return np.where(np.asarray(mask)[:, None, None, None], x[:, :, ::-1], x)


# ---------------------------------------------------------------- flip


@jax.jit
def _flip_both(x8, x32, key):
    return aug.random_flip(x8, key), aug.random_flip(x32, key), aug._flip_mask(key, x8.shape[0])


def test_random_flip_matches_mask_about_half():
    x8, x32 = _images()
    outs = _flip_both(x8, x32, KEY)
    mask = np.asarray(outs[2])
    assert abs(mask.sum() - B / 2) < 0.1 * B / 2
    _check_both(outs, x8, x32, lambda x: _np_flip(x, mask))


# ---------------------------------------------------------------- alternating flip


_coin = jax.jit(lambda key, i: jax.random.bernoulli(jax.random.fold_in(key, i)))


def _np_base(key, indices):
    """The documented coin base(key, i) = bernoulli(fold_in(key, i)), one index at a time."""
    return np.array([bool(_coin(key, int(i))) for i in indices])


@jax.jit
def _alt_both(x8, x32, key, indices, epoch):
    return (
        aug.alternating_flip(x8, key, indices, epoch),
        aug.alternating_flip(x32, key, indices, epoch),
        aug._alternating_flip_mask(key, indices, epoch),
    )


def test_alternating_flip():
    x8, x32 = _images()
    indices = np.random.default_rng(1).permutation(50_000)[:B]
    base = _np_base(KEY, indices)
    assert abs(base.sum() - B / 2) < 0.1 * B / 2  # about half flipped at epoch 0
    masks = []
    for epoch in range(4):  # epoch traced: one compilation
        outs = _alt_both(x8, x32, KEY, indices, epoch)
        expected = base ^ (epoch % 2 == 1)
        np.testing.assert_array_equal(np.asarray(outs[2]), expected)
        _check_both(outs, x8, x32, lambda x, expected=expected: _np_flip(x, expected))
        masks.append(np.asarray(outs[2]))
    for e in range(3):
        assert not np.any(masks[e] == masks[e + 1])  # every image changes state every epoch
    # Permute the batch and its indices: the results permute alike.
    perm = np.random.default_rng(2).permutation(B)
    outs_perm = _alt_both(x8[perm], x32[perm], KEY, indices[perm], 1)
    outs = _alt_both(x8, x32, KEY, indices, 1)
    for y_perm, y in zip(outs_perm, outs):
        np.testing.assert_array_equal(np.asarray(y_perm), np.asarray(y)[perm])


# ---------------------------------------------------------------- translate


def _np_translate(x, offsets, pad):
    _, h, w, _ = x.shape
    out = np.empty_like(x)
    for i, (dy, dx) in enumerate(np.asarray(offsets)):
        p = np.pad(x[i], ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        out[i] = p[pad + dy : pad + dy + h, pad + dx : pad + dx + w]
    return out


@functools.partial(jax.jit, static_argnames="pad")
def _translate_both(x8, x32, key, pad):
    return (
        aug.random_translate(x8, key, pad),
        aug.random_translate(x32, key, pad),
        aug._translate_offsets(key, x8.shape[0], pad),
    )


def test_random_translate_matches_reference_and_covers_offsets():
    x8, x32 = _images()
    outs = _translate_both(x8, x32, KEY, pad=2)
    offsets = np.asarray(outs[2])
    assert offsets.shape == (B, 2) and offsets.min() == -2 and offsets.max() == 2
    assert len({(int(dy), int(dx)) for dy, dx in offsets}) == 25
    _check_both(outs, x8, x32, lambda x: _np_translate(x, offsets, 2))


def test_random_translate_other_pad_non_square():
    x8, x32 = _images(64, h=4, w=6)  # pad 3 = H - 1: the widest reflect padding allows
    outs = _translate_both(x8, x32, KEY, pad=3)
    _check_both(outs, x8, x32, lambda x: _np_translate(x, outs[2], 3))


def test_random_translate_pad_limits():
    x8, _ = _images(4, h=4, w=6)
    np.testing.assert_array_equal(np.asarray(aug.random_translate(x8, KEY, 0)), x8)  # identity
    message = r"translate pad must be in \[0, 3\] for 4x6 images, got 4"
    with pytest.raises(ValueError, match=message):
        aug.random_translate(x8, KEY, 4)


# ---------------------------------------------------------------- cutout


def _np_cutout(x, centres, size):
    _, h, w, _ = x.shape
    out = x.copy()
    for i, (cy, cx) in enumerate(np.asarray(centres)):
        y0, x0 = cy - size // 2, cx - size // 2
        out[i, max(y0, 0) : min(y0 + size, h), max(x0, 0) : min(x0 + size, w)] = 0
    return out


@jax.jit
def _cutout_both(x8, x32, key):
    """Sizes 8 and 5 (odd: the square is [c - 2, c + 3)); both use the same centres."""
    return (
        aug.cutout(x8, key, 8),
        aug.cutout(x32, key, 8),
        aug._cutout_centres(key, x8.shape[0], *x8.shape[1:3]),
        aug.cutout(x8, key, 5),
        aug.cutout(x32, key, 5),
    )


def test_cutout_matches_reference():
    x8, x32 = _images()
    outs = _cutout_both(x8, x32, KEY)
    centres = np.asarray(outs[2])
    assert centres.min() == 0 and centres.max() == 31  # uniform over the image
    for size, sized_outs in ((8, outs[:2]), (5, outs[3:])):
        _check_both(sized_outs, x8, x32, lambda x, size=size: _np_cutout(x, centres, size))
        # Zeroed area: size x size inside, clipped at the border; the batch has both kinds.
        zeroed = (np.asarray(sized_outs[0]) == 0).all(axis=-1).sum(axis=(1, 2))
        top, left = centres[:, 0] - size // 2, centres[:, 1] - size // 2
        rows = np.minimum(top + size, 32) - np.maximum(top, 0)
        cols = np.minimum(left + size, 32) - np.maximum(left, 0)
        np.testing.assert_array_equal(zeroed, rows * cols)
        assert (zeroed == size * size).any() and (zeroed < size * size).any()


def test_cutout_size_zero_is_identity():
    x8, _ = _images(4)
    np.testing.assert_array_equal(np.asarray(aug.cutout(x8, KEY, 0)), x8)


# ---------------------------------------------------------------- apply: names, order, keys


def _manual(x, key, run_key, names, indices, epoch):
    """The documented composition: in the order given, augmentation k drawing from
    fold_in(key, k) (and the alternating flip from fold_in(run_key, k)). Pad 2 and size 8;
    reuses the jitted functions above (same shapes: no new compilation)."""
    fold = jax.random.fold_in
    for k, name in enumerate(names):
        if name == "flip":
            x = _np_flip(x, _flip_both(x, x.astype(np.float32), fold(key, k))[2])
        elif name == "alternating_flip":
            x = _np_flip(x, _np_base(fold(run_key, k), indices) ^ (epoch % 2 == 1))
        elif name == "translate":
            x = _np_translate(x, _translate_both(x, x.astype(np.float32), fold(key, k),
                                                 pad=2)[2], 2)
        elif name == "cutout":
            x = _np_cutout(x, _cutout_both(x, x.astype(np.float32), fold(key, k))[2], 8)
    return x


@functools.partial(jax.jit, static_argnames="names")
def _apply(x, key, run_key, indices, epoch, names):
    settings = {"translate": {"pad": 2}, "cutout": {"size": 8}}
    return aug.apply(x, tuple((name, settings.get(name, {})) for name in names), key, run_key,
                     indices=indices, epoch=epoch)


def test_the_built_in_augmentations_are_registered_as_a_users_would_be():
    assert list(REGISTRY["augmentation"]) == ["flip", "alternating_flip", "translate", "cutout",
                                               "colour_jitter"]
    assert REGISTRY["augmentation"]["translate"].obj is aug.random_translate


@pytest.mark.parametrize(
    "names",
    [
        ("cutout", "translate", "alternating_flip", "flip"),  # applied in the order given
        ("translate",),  # alone, first: it draws from fold_in(key, 0)
    ],
)
def test_apply_order_and_keys(names):
    x8, _ = _images(seed=1)
    indices = np.random.default_rng(3).permutation(50_000)[:B]
    key, run_key = jax.random.key(7), jax.random.key(8)
    y = _apply(x8, key, run_key, indices, jnp.int32(3), names)  # names static, epoch traced
    assert y.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(y), _manual(x8, key, run_key, names, indices, 3))


def test_apply_no_names_is_identity():
    x8, _ = _images(4)
    np.testing.assert_array_equal(np.asarray(aug.apply(x8, (), KEY, KEY)), x8)


def test_apply_names_an_unknown_augmentation():
    with pytest.raises(ExtensionError) as err:
        aug.apply(jnp.zeros((2, 32, 32, 3), jnp.uint8), (("flip", {}), ("mixup", {})), KEY, KEY)
    assert str(err.value) == ("unknown augmentation 'mixup': choose one of flip, alternating_flip, "
                              "translate, cutout, colour_jitter, or name yours as module:attribute")


def test_colour_jitter_is_cifar10_speedruns_in_the_normalised_space():
    """cifar10-speedrun's batch_color_jitter on normalised images (inputs + b, then * c), with
    the draws the docstring names; the result in the 0-255 pixel scale, unrounded."""
    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), np.uint8)
    key = jax.random.key(3)
    out = np.asarray(aug.colour_jitter(jnp.asarray(images), key, 0.1399, 0.1308),
                     np.float64)
    shift_key, scale_key = jax.random.split(key)
    b = np.asarray(jax.random.uniform(shift_key, (64, 1, 1, 1), minval=-0.1399, maxval=0.1399))
    c = 1 + np.asarray(jax.random.uniform(scale_key, (64, 1, 1, 1), minval=-0.1308,
                                          maxval=0.1308))
    mean, std = np.array(CIFAR_MEAN), np.array(CIFAR_STD)
    normalised = (images / 255 - mean) / std
    jittered = (normalised + b) * c  # the original's order: brightness, then contrast
    np.testing.assert_allclose((out / 255 - mean) / std, jittered, rtol=1e-5, atol=1e-4)
    assert out.dtype == np.float64 and np.abs(b).max() <= 0.1399 and np.abs(c - 1).max() <= 0.1308
    assert len(np.unique(b)) == 64  # one draw per image
    assert out.max() > 255 or out.min() < 0  # not clipped to the uint8 range
