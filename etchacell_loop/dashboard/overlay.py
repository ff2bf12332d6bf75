"""A slice with its consensus drawn over it, as one PNG for the consensus page.

Why composed on the server: the three consensus images (area, envelope band, confidence) and the
subject's frame are files under the data directory that the browser cannot reach; one small PNG per
view is simpler and safer than serving those folders. The confidence is a heat overlay whose opacity
follows the share of volunteers who agree; the envelope band is drawn in a colour that no EM slice has.
"""

from __future__ import annotations

import io
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

LAYERS = ("frame", "confidence", "outline")
BAND_RGB = (0, 229, 255)
HEAT_LOW_RGB = np.array([255, 214, 0], dtype=np.float32)
HEAT_HIGH_RGB = np.array([230, 40, 40], dtype=np.float32)
MAX_HEAT_OPACITY = 0.55
MAX_SIDE_PX = 1000


class OverlayError(Exception):
    """The consensus images are missing or unreadable; the message says which file."""


@dataclass(frozen=True)
class OverlaySources:
    """The files of one consensus view; ``frame`` may be None (no local frame: a grey ground)."""

    frame: Path | None
    band: Path
    confidence: Path


def overlay_png(sources: OverlaySources, layers: Collection[str] = LAYERS) -> bytes:
    """The composed view as PNG bytes, at the consensus images' size (at most ``MAX_SIDE_PX``)."""
    band = _grey(sources.band) > 127
    confidence = _grey(sources.confidence).astype(np.float32) / 255.0
    if confidence.shape != band.shape:
        raise OverlayError(f"{sources.confidence.name} and {sources.band.name} differ in size")
    ground = _ground(sources.frame, band.shape) if "frame" in layers else np.full(band.shape, 96, np.uint8)
    rgb = np.repeat(ground[..., None].astype(np.float32), 3, axis=2)
    if "confidence" in layers:
        rgb = _heat(rgb, confidence)
    if "outline" in layers:
        rgb[band] = BAND_RGB
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    image.thumbnail((MAX_SIDE_PX, MAX_SIDE_PX))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False, compress_level=3)
    return out.getvalue()


def _heat(rgb: NDArray[np.float32], confidence: NDArray[np.float32]) -> NDArray[np.float32]:
    colour = HEAT_LOW_RGB + (HEAT_HIGH_RGB - HEAT_LOW_RGB) * confidence[..., None]
    alpha = (confidence * MAX_HEAT_OPACITY)[..., None]
    blended: NDArray[np.float32] = rgb * (1 - alpha) + colour * alpha
    return blended


def _ground(frame: Path | None, shape: tuple[int, ...]) -> NDArray[np.uint8]:
    """The subject's target frame at the consensus images' size, or grey when it cannot be read."""
    if frame is None or not frame.is_file():
        return np.full(shape, 96, np.uint8)
    try:
        with Image.open(frame) as image:
            grey = image.convert("L")
            if grey.size != (shape[1], shape[0]):
                grey = grey.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
            return np.asarray(grey, dtype=np.uint8)
    except OSError:
        return np.full(shape, 96, np.uint8)


def _grey(path: Path) -> NDArray[np.uint8]:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"), dtype=np.uint8)
    except FileNotFoundError:
        raise OverlayError(f"consensus image {path.name} is missing") from None
    except OSError as exc:
        raise OverlayError(f"consensus image {path.name} cannot be read: {exc}") from None
