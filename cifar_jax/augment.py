"""On-device data augmentation: pure, jittable, batched JAX functions (airbench94's and more).

Images are NHWC arrays `[B, H, W, C]` of any dtype (uint8 or float); every function returns the
same shape and dtype, runs inside `jax.jit` with no host round trip, and treats the whole batch
at once (no Python loop over images). `pad` and `size` are Python values fixed at trace time
(a sweep of them makes a program per value). Each is an augmentation as
`cifar_jax.registry.CONTRACTS` has it (registered in `cifar_jax/recipes/`): its parameters are
named as the step passes them, and its own settings are set as `--augment.translate.pad 4`.

- `random_flip(images, key)`: each image mirrored left-right with p = 0.5.
- `alternating_flip(images, run_key, indices, epoch)`: airbench's alternating flip. `indices`
  are the images' positions in the training set. Image i is mirrored iff
  `base(run_key, i) XOR (epoch odd)`, `base(run_key, i) =
  jax.random.bernoulli(jax.random.fold_in(run_key, i))` (vmapped over the batch): a fair coin
  that depends only on the key and the dataset index, so every image is seen both ways on
  alternating epochs whatever order and batches it comes in. `run_key` must therefore be the
  same in every epoch; `epoch` counts from 0 and may be traced.
- `random_translate(images, key, pad=2)`: reflect-pad by `pad` pixels (as
  `jnp.pad(mode='reflect')` or torch's `F.pad(..., 'reflect')`) and crop back to H x W at an
  offset (dy, dx), each uniform in [-pad, pad] and independent per image: output[y, x] =
  padded[y + pad + dy, x + pad + dx]. The rows are reflected by index arithmetic and the
  columns by padding, and one gather copies whole W x C rows: on XLA:CPU (2 cores, batch 1024,
  32x32x3) the fastest in float32 of the forms tried (vmapped `lax.dynamic_slice`, a two-stage
  select over the 2*pad+1 shifts, a per-pixel gather) and level with the per-pixel gather in
  uint8.
- `colour_jitter(images, key, brightness=0.1, contrast=0.1)`: hiverge/cifar10-speedrun's
  colour jitter, in the normalised space airbench's network sees, n = (x / 255 - mean) / std
  per channel (`data.CIFAR_MEAN`, `data.CIFAR_STD`): n' = (n + b) * c, b ~ U(-brightness,
  brightness) and c ~ U(1 - contrast, 1 + contrast) per image (b from the first key of
  `split(key)`, c from the second). Returns float32 pixels in the 0-255 scale, unrounded
  (the step scales them as it scales uint8), so it goes last in `--augment`.
- `cutout(images, key, size=8)`: zero a size x size square whose centre (cy, cx) is
  uniform over the image; the square covers rows [cy - size//2, cy - size//2 + size) and the
  same for columns, clipped at the border (DeVries & Taylor 2017, so a square near the edge is
  smaller; for an odd size the square is size wide, where their code makes it size - 1). Zero
  means 0 in the input's units: cut after normalisation to cut to the mean colour.

`apply(images, augmentations, key, run_key, ...)` applies the named augmentations (registered
names or import paths, each with its settings) in the order given; augmentation number k draws
from `jax.random.fold_in(key, k)`
and, where it asks for one, a run key `fold_in(run_key, k)`. (airbench crops before its epoch
flip; flipping first gives the same distribution, since a flip turns offset dx into -dx.)

All of these are pure functions of (images, key[, indices, epoch]): there is no RNG state, so a
run resumed from a checkpoint that derives its keys the same way (e.g. per step
`fold_in(fold_in(run_key, epoch), step)`) draws exactly the same augmentation as an
uninterrupted one.
"""

import jax
import jax.numpy as jnp
from jax import lax

from cifar_jax.data import CIFAR_MEAN, CIFAR_STD
from cifar_jax.registry import call, lookup


def _flip_mask(key, batch):
    """[batch] bool: which images `random_flip` mirrors."""
    return jax.random.bernoulli(key, 0.5, (batch,))


def _mirror_where(images, mask):
    return jnp.where(mask[:, None, None, None], images[:, :, ::-1], images)


def random_flip(images, key):
    """Mirror each image left-right with probability 0.5 (independently per image)."""
    return _mirror_where(images, _flip_mask(key, images.shape[0]))


def _alternating_flip_mask(key, indices, epoch):
    """[B] bool: `base(key, i) XOR (epoch odd)`, base(key, i) = bernoulli(fold_in(key, i))."""
    base = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(key, i)))(indices)
    return base ^ (jnp.asarray(epoch) % 2 == 1)


def alternating_flip(images, run_key, indices, epoch):
    """airbench's alternating flip: image i is mirrored iff base(run_key, i) XOR (epoch is odd).

    `indices` [B]: each image's position in the training set; `epoch` 0-based, may be traced.
    `run_key` must stay the same across epochs for the alternation to hold (see the module doc).
    """
    return _mirror_where(images, _alternating_flip_mask(run_key, jnp.asarray(indices), epoch))


def _translate_offsets(key, batch, pad):
    """[batch, 2] int32 (dy, dx), each uniform in [-pad, pad]: the shifts random_translate uses."""
    return jax.random.randint(key, (batch, 2), -pad, pad + 1, dtype=jnp.int32)


def _reflect(i, n):
    """Index i in [-(n-1), 2(n-1)] reflected into [0, n), edge not repeated (numpy 'reflect')."""
    i = jnp.abs(i)
    return jnp.where(i >= n, 2 * (n - 1) - i, i)


def random_translate(images, key, pad=2):
    """Reflect-pad by `pad` pixels, then crop H x W at a uniform random offset in
    [-pad, pad]^2 per image.

    `pad` must be a Python int with 0 <= pad < min(H, W) (as for torch's reflect padding).
    """
    b, h, w, c = images.shape
    if not 0 <= pad < min(h, w):
        raise ValueError(
            f"translate pad must be in [0, {min(h, w) - 1}] for {h}x{w} images, got {pad}"
        )
    if pad == 0:
        return images
    offsets = _translate_offsets(key, b, pad)
    cols = jnp.pad(images, ((0, 0), (0, 0), (pad, pad), (0, 0)), mode="reflect")  # [B, H, W+2p, C]
    rows = _reflect(jnp.arange(h, dtype=jnp.int32)[None, :] + offsets[:, :1], h)  # [B, H]
    starts = jnp.stack(
        [
            jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None], (b, h)),
            rows,
            jnp.broadcast_to(offsets[:, 1:] + pad, (b, h)),
        ],
        axis=-1,
    )  # [B, H, 3]: (image, source row, first padded column) of each output row
    dnums = lax.GatherDimensionNumbers(
        offset_dims=(2, 3), collapsed_slice_dims=(0, 1), start_index_map=(0, 1, 2)
    )
    return lax.gather(
        cols, starts, dnums, slice_sizes=(1, 1, w, c),
        mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,  # in bounds by construction
    )


def colour_jitter(images, key, brightness=0.1, contrast=0.1):
    """Each image's brightness shifted and contrast scaled in the normalised space (see the
    module docstring): x' = 255 (mean + (x / 255 - mean + std b) c), float32."""
    shape = (images.shape[0], 1, 1, 1)
    shift_key, scale_key = jax.random.split(key)
    shift = jax.random.uniform(shift_key, shape, minval=-brightness, maxval=brightness)
    scale = 1 + jax.random.uniform(scale_key, shape, minval=-contrast, maxval=contrast)
    mean, std = 255 * jnp.asarray(CIFAR_MEAN), 255 * jnp.asarray(CIFAR_STD)
    return mean + (images.astype(jnp.float32) - mean + std * shift) * scale


def _cutout_centres(key, batch, height, width):
    """[batch, 2] int32 (cy, cx): centres uniform over [0, height) x [0, width)."""
    ky, kx = jax.random.split(key)
    cy = jax.random.randint(ky, (batch,), 0, height, dtype=jnp.int32)
    cx = jax.random.randint(kx, (batch,), 0, width, dtype=jnp.int32)
    return jnp.stack([cy, cx], axis=1)


def cutout(images, key, size=8):
    """Zero a size x size square at a uniformly random centre per image, clipped at the border."""
    b, h, w, _ = images.shape
    if size <= 0:
        return images
    centres = _cutout_centres(key, b, h, w)
    top = centres[:, :1] - size // 2  # [B, 1]
    left = centres[:, 1:] - size // 2
    y = jnp.arange(h, dtype=jnp.int32)[None, :]
    x = jnp.arange(w, dtype=jnp.int32)[None, :]
    in_rows = (y >= top) & (y < top + size)  # [B, H]
    in_cols = (x >= left) & (x < left + size)  # [B, W]
    square = in_rows[:, :, None, None] & in_cols[:, None, :, None]
    return jnp.where(square, jnp.zeros((), images.dtype), images)


def apply(images, augmentations, key, run_key, *, indices=None, epoch=0):
    """The `augmentations` ((name, {setting: value}) pairs: registered names or import paths,
    each with its own settings), in that order.

    Augmentation number k is called with its settings and the arguments its signature names
    among: `key` (`fold_in(key, k)`: this batch's), `run_key` (`fold_in(run_key, k)`, from a key
    that is the same all run), `indices` (the images' positions in the training set), `epoch`
    (0-based). Its settings are Python values, static under jit, or a sweep's traced values.
    """
    for k, (name, settings) in enumerate(augmentations):
        images = call(lookup("augmentation", name).obj, images, key=jax.random.fold_in(key, k),
                      run_key=jax.random.fold_in(run_key, k), indices=indices,
                      epoch=epoch, **settings)
    return images
