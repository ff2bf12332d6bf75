"""What an aggregation leaves on disk.

``masks/<subject_id>.png`` (consensus area, 0/255), ``envelope/<subject_id>.png`` (the band, 0/255),
``confidence/<subject_id>.png`` (0 to 255 for 0 to 1), all at the natural size of the subject's target
frame; ``summary.csv`` (one row per subject), ``volunteers.csv`` (pooled agreement per volunteer),
``issues.csv`` (every classification or row that was not read cleanly, and why).

PNGs are 8-bit greyscale, written by :func:`encode_gray_png`: no row filter, zlib level 1 with the
run-length strategy. Masks and vote maps are long runs of equal values, so the files stay small, and
encoding costs half of what Pillow's adaptive filtering does (Pillow spends 3 ms on an all-black
1000x1000 image) — for a paper-sized export, three images for each of four thousand subjects.

Even so, deflating a megabyte of zeros costs zlib about 3 ms, and a nucleus fills a band of rows in the
middle of its image: the rows above and below it are all zero. Those are written as copies of one
deflated block of :data:`ZERO_BLOCK_ROWS` zero rows (a block deflated on its own and flushed to a byte
boundary decodes the same wherever it stands in the stream, and the zlib checksum of zeros has a
closed form), and only the band of rows holding the nucleus is deflated. The files decode to the same
pixels as one deflation of the whole image; on synthetic exports' consensus images they are 8%
larger and take 40% of the time.
"""

from __future__ import annotations

import csv
import os
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from etchacell_loop.cria.consensus import Consensus

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ZLIB_HEADER = b"\x78\x01"  # deflate with a 32 KiB window, fastest level
ADLER_MODULUS = 65521
ZERO_BLOCK_ROWS = 32  # the band deflated whole starts and ends within this many rows of the nucleus
DEFLATE_MEMORY_LEVEL = 6  # run-length deflation uses no hash table: smaller buffers stay in cache (40% faster than 9)
OUTPUT_FOLDERS = ("masks", "envelope", "confidence")


@dataclass(frozen=True)
class SubjectSummary:
    """One row of ``summary.csv``."""

    subject_id: int
    slice: str
    classifications: int  # of this subject
    empty: int  # of this subject's classifications, those with no usable tracing
    drawers: int  # volunteers who drew on the slice (from any subject showing it)
    classifications_used: int  # drawings the consensus method used
    flagged: int  # drawings left out, or agreeing with the consensus less than half
    unplaced_marks: int  # marks on frames whose slice the metadata does not name
    area_px: int
    stability: float | None  # Dice with the consensus without the latest drawing
    method: str
    problems: str


@dataclass(frozen=True)
class VolunteerSummary:
    """One row of ``volunteers.csv``."""

    volunteer: str
    slices: int
    mean_dice: float
    sensitivity: float
    specificity: float
    weight: float
    flagged: bool


def prepare_folders(out_dir: Path) -> None:
    for name in OUTPUT_FOLDERS:
        (out_dir / name).mkdir(parents=True, exist_ok=True)


def write_subject_images(out_dir: Path, subject_ids: Iterable[int], consensus: Consensus) -> None:
    """The three images of each subject showing the slice (encoded once for all of them). Written in
    place (a rename per image costs as much as encoding it): ``summary.csv`` is written last and
    atomically, so a run's images are complete when its summary exists."""
    images = consensus_pngs(consensus)
    for subject_id in subject_ids:
        for folder, png in images.items():
            (out_dir / folder / f"{subject_id}.png").write_bytes(png)


def consensus_pngs(consensus: Consensus) -> dict[str, bytes]:
    """The consensus as the three images, keyed by folder: area, envelope band (both 0/255) and
    confidence (0 to 255 for 0 to 1). One encoding shared by the offline run and the daemon, so the
    files mean the same wherever they come from."""
    return {
        "masks": encode_gray_png(_binary(consensus.area)),
        "envelope": encode_gray_png(_binary(consensus.band)),
        "confidence": encode_gray_png(consensus.confidence_u8()),
    }


def write_csv(path: Path, rows: Iterable[object], columns: Sequence[str]) -> None:
    """Dataclass rows as CSV, replaced atomically."""
    partial = path.with_suffix(path.suffix + ".partial")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(_cell(value) for value in astuple(row))  # type: ignore[call-overload]
    os.replace(partial, path)


def columns_of(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def _binary(mask: NDArray[np.bool_]) -> NDArray[np.uint8]:
    return mask.view(np.uint8) * np.uint8(255)


def encode_gray_png(image: NDArray[np.uint8]) -> bytes:
    """An 8-bit greyscale PNG of ``image`` (height, width), as any PNG reader decodes it."""
    height, width = image.shape
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", _zlib_rows(image)) + _chunk(b"IEND", b"")


def _zlib_rows(image: NDArray[np.uint8]) -> bytes:
    """The zlib stream of the image's PNG rows (filter byte 0, then the pixels), the all-zero rows
    above and below the others written as copies of one deflated block of zero rows."""
    height, width = image.shape
    row_bytes = width + 1
    used = np.flatnonzero(image.any(axis=1))
    first, last = (int(used[0]), int(used[-1]) + 1) if used.size else (height, height)
    above, below = first // ZERO_BLOCK_ROWS, (height - last) // ZERO_BLOCK_ROWS  # whole blocks of zero rows
    start, stop = above * ZERO_BLOCK_ROWS, height - below * ZERO_BLOCK_ROWS
    rows = np.zeros((stop - start, row_bytes), dtype=np.uint8)
    rows[:, 1:] = image[start:stop]
    zero_bytes = ZERO_BLOCK_ROWS * row_bytes
    zero_block = _deflated(bytes(zero_bytes)) if above or below else b""
    deflated = [zero_block] * above + [_deflated(rows.data)] + [zero_block] * below + [_deflated(b"", last=True)]
    checksum = _adler32_of_zeros(above * zero_bytes, zlib.adler32(b""))
    checksum = _adler32_of_zeros(below * zero_bytes, zlib.adler32(rows.data, checksum))
    return ZLIB_HEADER + b"".join(deflated) + struct.pack(">I", checksum)


def _deflated(data: bytes | memoryview, last: bool = False) -> bytes:
    """``data`` as raw deflate blocks from a fresh compressor: no reference reaches outside them, and
    they end on a byte boundary (a sync flush), so they can stand anywhere in a stream; ``last`` ends
    the stream."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15, DEFLATE_MEMORY_LEVEL, zlib.Z_RLE)
    return compressor.compress(data) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def _adler32_of_zeros(n_bytes: int, checksum: int) -> int:
    """``zlib.adler32(bytes(n_bytes), checksum)`` without reading the zeros: a zero byte leaves the
    first sum as it is and adds it to the second."""
    first, second = checksum & 0xFFFF, checksum >> 16
    return (((second + n_bytes * first) % ADLER_MODULUS) << 16) | first


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return value
