"""What an aggregation leaves on disk.

``masks/<subject_id>.png`` (consensus area, 0/255), ``envelope/<subject_id>.png`` (the band, 0/255),
``confidence/<subject_id>.png`` (0 to 255 for 0 to 1), all at the natural size of the subject's target
frame; ``summary.csv`` (one row per subject), ``volunteers.csv`` (pooled agreement per volunteer),
``issues.csv`` (every classification or row that was not read cleanly, and why).

PNGs are written with light compression: binary masks compress well at any level, and the
aggregation of a large export should not spend its time in zlib.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from etchacell_loop.cria.consensus import Consensus

PNG_COMPRESS_LEVEL = 1
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


def write_subject_images(out_dir: Path, subject_id: int, consensus: Consensus) -> None:
    """The three images of one subject, each written whole or not at all (temp file + rename)."""
    confidence = np.clip(np.rint(consensus.confidence * 255), 0, 255).astype(np.uint8)
    for folder, image in (
        ("masks", _binary(consensus.area)),
        ("envelope", _binary(consensus.band)),
        ("confidence", confidence),
    ):
        _write_png(out_dir / folder / f"{subject_id}.png", image)


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
    return np.where(mask, np.uint8(255), np.uint8(0))


def _write_png(path: Path, image: NDArray[np.uint8]) -> None:
    partial = path.with_name(path.name + ".partial")
    Image.fromarray(image, mode="L").save(partial, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    os.replace(partial, path)


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return value
