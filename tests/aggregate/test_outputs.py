"""The PNG encoder of aggregation outputs: exact pixels, a valid zlib stream, small files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from etchacell_loop.aggregate.outputs import ZERO_BLOCK_ROWS, encode_gray_png


def idat_payload(png: bytes) -> bytes:
    """The concatenated IDAT data of a PNG, each chunk's CRC checked on the way."""
    payload, offset = b"", 8
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kind, data = png[offset + 4 : offset + 8], png[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", png[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + data)
        if kind == b"IDAT":
            payload += data
        offset += 12 + length
    return payload


def decoded(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        assert image.mode == "L"
        return np.asarray(image)


def test_rows_above_and_below_the_content_decode_exactly() -> None:
    """Zero runs of every length around whole blocks, content anywhere, one row tall or all rows."""
    rng = np.random.default_rng(3)
    block = ZERO_BLOCK_ROWS
    heights = (1, 2, block - 1, block, block + 1, 3 * block + 5)
    for height in heights:
        for first in sorted({0, 1, block - 1, block, block + 1, height // 2, height - 1}):
            if not 0 <= first < height:
                continue
            for last in sorted({first + 1, first + 2, height - block, height - 1, height}):
                if not first < last <= height:
                    continue
                image = np.zeros((height, 37), np.uint8)
                image[first:last] = rng.integers(0, 256, (last - first, 37), dtype=np.uint8)
                image[first, 0] = image[last - 1, -1] = 255  # the content's first and last rows are not zero
                png = encode_gray_png(image)
                rows = zlib.decompress(idat_payload(png))  # checks the stream's Adler-32 too
                assert rows == np.hstack([np.zeros((height, 1), np.uint8), image]).tobytes()
                assert np.array_equal(decoded(png), image)


def test_empty_and_mostly_empty_images_stay_small() -> None:
    empty = np.zeros((1000, 1000), np.uint8)
    nucleus = empty.copy()
    yy, xx = np.mgrid[:1000, :1000]
    nucleus[(yy - 480) ** 2 + (xx - 520) ** 2 < 200**2] = 255
    for image in (empty, nucleus):
        png = encode_gray_png(image)
        assert np.array_equal(decoded(png), image)
        assert len(png) < 8_000  # a megabyte of pixels, nearly all in long runs
    pillow = io.BytesIO()
    Image.fromarray(nucleus).save(pillow, format="PNG", optimize=False)
    assert len(encode_gray_png(nucleus)) < 2 * len(pillow.getvalue())
