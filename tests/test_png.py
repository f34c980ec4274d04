"""cifar_jax.png against PIL: every row filter PNG has, the ordinary PNGs PIL writes, and what
it leaves to PIL (other kinds of PNG, damaged files)."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cifar_jax import png


def _chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def encode(image, filters):
    """A PNG of `image` (uint8 [H, W, 3]) whose row y is filtered with filters[y], written
    byte by byte from the PNG specification."""
    h, w, _ = image.shape
    flat = image.reshape(h, w * 3).astype(int)
    raw = bytearray()
    for y in range(h):
        raw.append(filters[y])
        for x in range(w * 3):
            a = flat[y, x - 3] if x >= 3 else 0
            b = flat[y - 1, x] if y else 0
            c = flat[y - 1, x - 3] if y and x >= 3 else 0
            predicted = (0, a, b, (a + b) // 2, _paeth(a, b, c))[filters[y]]
            raw.append((flat[y, x] - predicted) % 256)
    return _file(bytes(raw), h, w)


def _file(scanlines, h, w):
    """An 8-bit RGB PNG holding `scanlines` (each row: its filter byte, then its bytes)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(scanlines)
    return png.SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat[:50]) + _chunk(
        b"IDAT", idat[50:]) + _chunk(b"IEND", b"")  # two IDAT chunks, as PNG allows


def pil(blob):
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


def test_every_row_filter_decodes_as_pil_does():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), np.uint8)
    images[0] = 255 - images[0] // 64  # near-flat: the filters' wrap-arounds and ties
    blobs = [encode(image, rng.integers(0, 5, 32)) for image in images]  # filters mixed per row
    blobs.append(encode(images[1], [4] * 32))  # all Paeth
    decoded = png.decode_rgb8(blobs)
    assert decoded.shape == (7, 32, 32, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, np.stack([pil(b) for b in blobs]))


def test_pngs_as_pil_writes_them_decode_alike():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (32, 32, 3), np.uint8), np.zeros((32, 32, 3), np.uint8),
              np.tile(np.arange(32, dtype=np.uint8)[:, None, None] * 8, (1, 32, 3))]
    blobs = []
    for image in images:
        out = io.BytesIO()
        Image.fromarray(image).save(out, format="PNG")
        blobs.append(out.getvalue())
    np.testing.assert_array_equal(png.decode_rgb8(blobs), np.stack(images))


@pytest.mark.parametrize("mode, size", [("L", 32), ("RGBA", 32), ("P", 32), ("RGB", 16)])
def test_other_pngs_are_left_to_pil(mode, size):
    out = io.BytesIO()
    Image.new(mode, (size, size)).save(out, format="PNG")
    ok = encode(np.zeros((32, 32, 3), np.uint8), [0] * 32)
    assert png.decode_rgb8([ok, out.getvalue()]) is None


def test_damaged_files_are_left_to_pil():
    ok = encode(np.zeros((32, 32, 3), np.uint8), [0] * 32)
    assert png.decode_rgb8([ok]) is not None
    assert png.decode_rgb8([ok, ok[:-30]]) is None  # truncated: its pixels cut short
    assert png.decode_rgb8([b"GIF89a" + ok[8:]]) is None  # not a PNG
    no_such_filter = bytes([7] + [0] * 96) * 32
    assert png.decode_rgb8([_file(no_such_filter, 32, 32)]) is None
