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


# ---------------------------------------------------------------- augment


def _manual(x, key, names, indices, epoch, flip_key):
    """The documented composition: registry order, op k drawing from fold_in(key, k).

    Pad 2 and size 8; reuses the jitted functions above (same shapes: no new compilation).
    """
    fold = jax.random.fold_in
    if "flip" in names:
        x = _np_flip(x, _flip_both(x, x.astype(np.float32), fold(key, 0))[2])
    if "alternating_flip" in names:
        x = _np_flip(x, _np_base(fold(flip_key, 1), indices) ^ (epoch % 2 == 1))
    if "translate" in names:
        x = _np_translate(x, _translate_both(x, x.astype(np.float32), fold(key, 2), pad=2)[2], 2)
    if "cutout" in names:
        x = _np_cutout(x, _cutout_both(x, x.astype(np.float32), fold(key, 3))[2], 8)
    return x


_augment = jax.jit(aug.augment, static_argnames=("names", "translate_pad", "cutout_size"))


def test_registry_order():
    assert list(aug.AUGMENTATIONS) == ["flip", "alternating_flip", "translate", "cutout"]


@pytest.mark.parametrize(
    "names",
    [
        ("cutout", "translate", "alternating_flip", "flip"),  # applied in registry order
        ("translate",),  # alone it draws as it did after the flips: fold_in(key, 2)
    ],
)
def test_augment_composition_and_keys(names):
    x8, _ = _images(seed=1)
    indices = np.random.default_rng(3).permutation(50_000)[:B]
    key, flip_key = jax.random.key(7), jax.random.key(8)
    kw = {"indices": indices, "flip_key": flip_key, "translate_pad": 2, "cutout_size": 8}
    y = _augment(x8, key, names, epoch=jnp.int32(3), **kw)  # jitted, names static, epoch traced
    assert y.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(y), _manual(x8, key, names, indices, 3, flip_key))


def test_augment_no_names_and_one_name_as_string():
    x8, _ = _images(4)
    np.testing.assert_array_equal(np.asarray(aug.augment(x8, KEY, ())), x8)
    assert aug._check_names("flip") == aug._check_names(("flip",)) == {"flip"}


def test_augment_errors():
    x = jnp.zeros((2, 32, 32, 3), jnp.uint8)
    with pytest.raises(ValueError) as err:
        aug.augment(x, KEY, ("flip", "mixup"))
    assert str(err.value) == (
        "unknown augmentation 'mixup'; choose from: flip, alternating_flip, translate, cutout"
    )
    with pytest.raises(ValueError, match="alternating_flip needs indices="):
        aug.augment(x, KEY, ("alternating_flip",), flip_key=KEY)
    with pytest.raises(ValueError, match="alternating_flip needs indices="):
        aug.augment(x, KEY, ("alternating_flip",), indices=jnp.arange(2))
