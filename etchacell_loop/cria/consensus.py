"""Stack volunteers' fills into a height map and keep where enough of them agree.

The denominator is the number of volunteers who drew on the slice (as the seed code does): a
volunteer who drew nothing on it has said nothing about where its envelope is, and counting them
would erase real nuclei on slices many volunteers skipped. ``denominator="classifications"`` counts
every classification instead, for comparison with the paper's wording.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from etchacell_loop.cria.raster import Mask

Denominator = Literal["drawers", "classifications"]


@dataclass(frozen=True)
class CriaParams:
    """CRIA's parameters, declared as data (picked by configuration)."""

    agreement_fraction: float = 0.5
    denominator: Denominator = "drawers"
    envelope_width_nm: float = 70.0
    pixel_size_nm: float = 10.0


@dataclass(frozen=True)
class Consensus:
    """One slice's consensus: area (bool), envelope band (bool), confidence (fraction 0..1, float32)."""

    area: Mask
    band: Mask
    confidence: NDArray[np.float32]
    n_volunteers: int
    n_classifications: int

    @property
    def area_px(self) -> int:
        return int(self.area.sum())


def cria(fills: Sequence[Mask], n_classifications: int, shape: tuple[int, int], params: CriaParams) -> Consensus:
    """Consensus of the volunteers' filled masks (one per volunteer who drew on the slice)."""
    height_map = np.zeros(shape, dtype=np.uint16)
    for fill in fills:
        height_map += fill
    denominator = len(fills) if params.denominator == "drawers" else max(n_classifications, len(fills))
    if denominator == 0:
        empty = np.zeros(shape, dtype=np.bool_)
        return Consensus(empty, empty.copy(), np.zeros(shape, np.float32), 0, n_classifications)
    confidence = (height_map / denominator).astype(np.float32)
    area = confidence >= params.agreement_fraction
    band = envelope_band(area, params.envelope_width_nm / params.pixel_size_nm)
    return Consensus(area, band, confidence, len(fills), n_classifications)


def envelope_band(area: Mask, width_px: float) -> Mask:
    """The area's outline drawn ``width_px`` wide (70 nm → 7 px at 10 nm): ⌈n/2⌉ pixels inside the
    outline and ⌊n/2⌋ outside, so the band straddles the boundary the volunteers traced."""
    n = max(1, round(width_px))
    inside, outside = (n + 1) // 2, n // 2
    if not area.any():
        return np.zeros_like(area)
    inner = ndimage.binary_erosion(area, _disk(inside), border_value=0)
    outer = ndimage.binary_dilation(area, _disk(outside)) if outside else area
    return np.asarray(outer & ~inner, dtype=np.bool_)


def _disk(radius: int) -> NDArray[np.bool_]:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return np.asarray(x * x + y * y <= radius * radius, dtype=np.bool_)
