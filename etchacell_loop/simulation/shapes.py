"""Known truth per slice: a synthetic nucleus through z, its nucleolus, and the organelles around it.

Coordinates are subject pixels (the 1000 x 1000 images volunteers see, 20 nm/px) with pixel centres at
integer coordinates, as :mod:`etchacell_loop.cria.raster` fills them; z is a slice index (slices 50 nm
apart), and a region of interest spans one nucleus, so its stack's first and last slices are the caps.

The nucleus is the union of star-shaped blobs. The body's outline in slice z is the radius function
``r(θ, z) = R · profile(z) · (1 + Σ a_k(z) cos(kθ + φ_k(z))) - notches`` (low-order Fourier terms that
drift along z, times a flattened-ellipsoid profile, less smooth notches: the invaginations that make
real envelopes concave). Two or three small lobes bulge above the body's top and below its bottom, so a
slice near a cap cuts only the lobes and shows several islands, as slices through a lobed nucleus do.
The nucleolus is a blob kept strictly inside the body; the organelles (mitochondria and the like, what
volunteers trace by mistake) are ellipses on paths that wind round the nucleus without touching it.

Speed: a 1000 x 1000 slice takes a few milliseconds. Each blob's polar coordinates are computed once
per region over its bounding box; a slice then only evaluates r(θ) on a table of angles and compares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray
from skimage.measure import find_contours

Mask = NDArray[np.bool_]
Points = NDArray[np.float64]  # shape (n, 2): x, y in pixels

PIXEL_SIZE_NM = 20.0  # subject pixels: 10 nm source pixels shown at half size
SLICE_SPACING_NM = 50.0
ANGLE_BINS = 4096  # r(θ) table size: 0.4 px of arc at a 250 px radius
_REFERENCE_SIZE_PX = 1000.0  # the sizes below are for this image size and scale with it


@dataclass(frozen=True)
class Harmonic:
    """One Fourier term of an outline: ``amplitude`` (a fraction of the radius) and phase both drift
    linearly from one end of the blob's z range to the other, so the outline changes between slices."""

    order: int
    amplitude: float
    phase_rad: float
    amplitude_drift: float = 0.0
    phase_drift_rad: float = 0.0


@dataclass(frozen=True)
class Notch:
    """An invagination: the outline pulled in around ``angle_rad`` by ``depth`` (a fraction of the
    local radius), strongest at slice ``z_centre`` and fading over ``z_spread`` slices."""

    angle_rad: float
    depth: float
    width_rad: float
    z_centre: float
    z_spread: float


@dataclass(frozen=True)
class Blob:
    """A star-shaped 3-D blob centred on (``centre_x_px``, ``centre_y_px``), present in slices
    ``z_centre ± z_half_height``; its radius follows the profile ``(1 - |u|^flatness)^(1/flatness)``
    of the normalised height u (2 is an ellipsoid, larger is flatter with steeper caps)."""

    centre_x_px: float
    centre_y_px: float
    radius_px: float
    z_centre: float
    z_half_height: float
    harmonics: tuple[Harmonic, ...] = ()
    notches: tuple[Notch, ...] = ()
    flatness: float = 2.0

    @property
    def max_extent_px(self) -> float:
        """No point of any slice's outline is further than this from the centre."""
        return self.radius_px * (1.0 + sum(abs(h.amplitude) + abs(h.amplitude_drift) for h in self.harmonics))

    def radius_table(self, z: float) -> NDArray[np.float64] | None:
        """r(θ) in slice z on the :data:`ANGLE_BINS` bin centres; None where the blob is absent."""
        u = (z - self.z_centre) / self.z_half_height
        if abs(u) >= 1.0:
            return None
        profile = (1.0 - abs(u) ** self.flatness) ** (1.0 / self.flatness)
        theta = _bin_angles()
        shape = np.ones_like(theta)
        for h in self.harmonics:
            amplitude = h.amplitude + h.amplitude_drift * u
            shape += amplitude * np.cos(h.order * theta + h.phase_rad + h.phase_drift_rad * u)
        radius = self.radius_px * profile * shape
        for notch in self.notches:
            strength = notch.depth * math.exp(-0.5 * ((z - notch.z_centre) / notch.z_spread) ** 2)
            offset = np.angle(np.exp(1j * (theta - notch.angle_rad)))  # wrapped to (-π, π]
            radius *= 1.0 - strength * np.exp(-0.5 * (offset / notch.width_rad) ** 2)
        return np.asarray(np.maximum(radius, 0.0), dtype=np.float64)


@dataclass(frozen=True)
class Organelle:
    """A mitochondrion-like ellipse whose centre winds round the nucleus centre at a fixed distance
    (``orbit_px``), so it never meets the nucleus while it drifts and turns from slice to slice."""

    orbit_px: float
    angle_rad: float
    angle_drift_rad: float  # per slice
    semi_major_px: float
    semi_minor_px: float
    orientation_rad: float
    orientation_drift_rad: float  # per slice
    size_phase_rad: float

    def centre(self, origin_x_px: float, origin_y_px: float, z: float) -> tuple[float, float]:
        angle = self.angle_rad + self.angle_drift_rad * z
        return origin_x_px + self.orbit_px * math.cos(angle), origin_y_px + self.orbit_px * math.sin(angle)

    def axes(self, z: float) -> tuple[float, float]:
        """Semi-axes in slice z: mitochondria swell and thin along their length."""
        factor = 0.8 + 0.2 * math.sin(2 * math.pi * z / 60.0 + self.size_phase_rad)
        return self.semi_major_px * factor, self.semi_minor_px * factor


@dataclass(frozen=True, eq=False)
class SliceTruth:
    """What one slice really shows: the nucleus, its nucleolus, the organelles around it (bool masks).

    Outlines are computed on first use and kept, since every volunteer on the slice traces them.
    """

    z: int
    nucleus: Mask
    nucleolus: Mask
    organelles: tuple[Mask, ...]

    @property
    def shape_px(self) -> tuple[int, int]:
        return int(self.nucleus.shape[0]), int(self.nucleus.shape[1])

    @cached_property
    def nucleus_outlines(self) -> list[Points]:
        return outlines(self.nucleus)

    @cached_property
    def nucleolus_outlines(self) -> list[Points]:
        return outlines(self.nucleolus)

    @cached_property
    def organelle_outlines(self) -> tuple[list[Points], ...]:
        return tuple(outlines(mask) for mask in self.organelles)


@dataclass(frozen=True, eq=False)
class _PolarGrid:
    """A blob's polar coordinates over its bounding box, computed once per region."""

    row0: int
    col0: int
    radius_px: NDArray[np.float32]
    angle_bin: NDArray[np.intp]


@dataclass(frozen=True, eq=False)
class NucleusModel:
    """One region of interest: a nucleus through ``n_slices`` slices and what surrounds it."""

    n_slices: int
    shape_px: tuple[int, int]
    body: Blob
    lobes: tuple[Blob, ...]
    nucleolus: Blob | None
    organelles: tuple[Organelle, ...]

    @property
    def nucleus_blobs(self) -> tuple[Blob, ...]:
        return (self.body, *self.lobes)

    def slice_truth(self, z: int) -> SliceTruth:
        """The truth of slice ``z`` (0 ≤ z < n_slices)."""
        nucleus = np.zeros(self.shape_px, dtype=np.bool_)
        for blob, grid in zip(self.nucleus_blobs, self._grids, strict=True):
            table = blob.radius_table(z)
            if table is not None:
                _paint(nucleus, grid, table)
        nucleolus = np.zeros(self.shape_px, dtype=np.bool_)
        table = self._nucleolus_table(z)
        if table is not None:
            _paint(nucleolus, self._nucleolus_grid, table)
        origin = (self.body.centre_x_px, self.body.centre_y_px)
        organelles = tuple(_ellipse_mask(self.shape_px, organelle, origin, z) for organelle in self.organelles)
        return SliceTruth(z, nucleus, nucleolus, organelles)

    def _nucleolus_table(self, z: int) -> NDArray[np.float64] | None:
        """The nucleolus' r(θ), shrunk where needed so that it stays inside the body with a margin:
        the body holds the disc of its smallest radius, so fitting in that disc is enough."""
        if self.nucleolus is None:
            return None
        table = self.nucleolus.radius_table(z)
        body = self.body.radius_table(z)
        if table is None or body is None:
            return None
        shift = math.hypot(
            self.nucleolus.centre_x_px - self.body.centre_x_px, self.nucleolus.centre_y_px - self.body.centre_y_px
        )
        room = float(body.min()) - shift - 8.0
        largest = float(table.max())
        if room < 4.0 or largest < 4.0:
            return None
        return table * min(1.0, room / largest)

    @cached_property
    def _grids(self) -> tuple[_PolarGrid, ...]:
        return tuple(_polar_grid(blob, self.shape_px) for blob in self.nucleus_blobs)

    @cached_property
    def _nucleolus_grid(self) -> _PolarGrid:
        return _polar_grid(self.nucleolus if self.nucleolus is not None else self.body, self.shape_px)


def nucleus_stack(
    rng: np.random.Generator, n_slices: int, shape_px: tuple[int, int] = (1000, 1000)
) -> list[SliceTruth]:
    """The truth of every slice of one synthetic nucleus (for small stacks; large ones use
    :func:`draw_nucleus` and :meth:`NucleusModel.slice_truth` slice by slice)."""
    model = draw_nucleus(rng, n_slices, shape_px)
    return [model.slice_truth(z) for z in range(n_slices)]


def draw_nucleus(rng: np.random.Generator, n_slices: int, shape_px: tuple[int, int] = (1000, 1000)) -> NucleusModel:
    """A random nucleus spanning the stack (caps on its first and last slices), 430-570 px across at
    its widest on a 1000 px image, with its nucleolus and three to eight organelles."""
    if n_slices < 1:
        raise ValueError(f"a stack needs at least one slice, not {n_slices}")
    height, width = shape_px
    scale = min(height, width) / _REFERENCE_SIZE_PX
    centre_x = width / 2 + rng.uniform(-20, 20) * scale
    centre_y = height / 2 + rng.uniform(-20, 20) * scale
    z_centre, half_height = (n_slices - 1) / 2, max(n_slices / 2, 1.0)
    radius = rng.uniform(215, 285) * scale
    body, lobes, nucleolus = nucleus_blobs(rng, centre_x, centre_y, radius, z_centre, half_height)
    organelles = _place_organelles(rng, body, lobes, shape_px, n_slices, scale)
    return NucleusModel(n_slices, shape_px, body, lobes, nucleolus, organelles)


def nucleus_blobs(
    rng: np.random.Generator,
    centre_x_px: float,
    centre_y_px: float,
    radius_px: float,
    z_centre: float,
    half_height: float,
) -> tuple[Blob, tuple[Blob, ...], Blob]:
    """A random nucleus of any size anywhere in a volume: its body (widest ``radius_px``, reaching
    about 0.85 of ``half_height`` slices either side of ``z_centre``), the lobes that reach past the
    body's top and bottom (the caps' islands) and its nucleolus. Scale-free, so stacks of subject
    pixels and whole synthetic volumes draw nuclei the same way."""
    body = Blob(
        centre_x_px,
        centre_y_px,
        radius_px,
        z_centre,
        half_height * rng.uniform(0.80, 0.88),
        harmonics=_harmonics(rng, (0.12, 0.06, 0.04, 0.025)),
        notches=_notches(rng, z_centre, half_height),
        flatness=rng.uniform(2.0, 2.8),
    )
    lobes = (*_cap_lobes(rng, body, half_height, +1), *_cap_lobes(rng, body, half_height, -1))
    return body, lobes, _nucleolus(rng, body, half_height)


def outlines(mask: Mask, min_area_px: float = 0.0) -> list[Points]:
    """Each loop of the region's boundary as an (n, 2) x, y array (first point not repeated): one per
    island, plus one per hole. Loops run with the region on a consistent side: islands have negative
    shoelace area ``½Σ(x_i·y_{i+1} - x_{i+1}·y_i)`` and holes positive, so ``(-dy, dx)`` along a loop
    always points out of the region. Loops enclosing less than ``min_area_px`` are left out."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return []
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = np.pad(mask[r0:r1, c0:c1], 1).astype(np.float32)
    height, width = mask.shape
    loops: list[Points] = []
    for contour in find_contours(crop, 0.5, positive_orientation="high"):  # type: ignore[no-untyped-call]
        points = np.column_stack([contour[:, 1] + (c0 - 1), contour[:, 0] + (r0 - 1)])
        if len(points) > 1 and np.array_equal(points[0], points[-1]):
            points = points[:-1]
        if len(points) < 3 or abs(signed_area(points)) < min_area_px:
            continue
        points[:, 0] = np.clip(points[:, 0], 0.0, width - 1.0)
        points[:, 1] = np.clip(points[:, 1], 0.0, height - 1.0)
        loops.append(points)
    return loops


def signed_area(loop: Points) -> float:
    """Shoelace area of a closed loop (negative for islands as :func:`outlines` orients them)."""
    x, y = loop[:, 0], loop[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


# --- drawing a random nucleus ----------------------------------------------------------------------


def _harmonics(rng: np.random.Generator, largest: tuple[float, ...], first_order: int = 2) -> tuple[Harmonic, ...]:
    """Fourier terms of orders 2, 3, …; each amplitude up to its bound, drifting by up to half of it."""
    terms = []
    for offset, bound in enumerate(largest):
        amplitude = rng.uniform(0.3, 1.0) * bound
        terms.append(
            Harmonic(
                order=first_order + offset,
                amplitude=amplitude,
                phase_rad=rng.uniform(0, 2 * math.pi),
                amplitude_drift=rng.uniform(-0.5, 0.5) * amplitude,
                phase_drift_rad=rng.uniform(-0.6, 0.6),
            )
        )
    return tuple(terms)


def _notches(rng: np.random.Generator, z_centre: float, half_height: float) -> tuple[Notch, ...]:
    """None, one or two invaginations, each over a part of the stack."""
    count = int(rng.choice([0, 1, 1, 2]))
    return tuple(
        Notch(
            angle_rad=rng.uniform(-math.pi, math.pi),
            depth=rng.uniform(0.25, 0.55),
            width_rad=rng.uniform(0.12, 0.3),
            z_centre=z_centre + rng.uniform(-0.4, 0.4) * half_height,
            z_spread=rng.uniform(0.2, 0.45) * half_height,
        )
        for _ in range(count)
    )


def _cap_lobes(rng: np.random.Generator, body: Blob, half_height: float, side: int) -> list[Blob]:
    """Two or three lobes reaching past the body's top (side +1) or bottom (-1): near that cap only
    they are cut, far enough apart to be separate islands."""
    count = int(rng.integers(2, 4))
    start = rng.uniform(0, 2 * math.pi)
    lobes = []
    for index in range(count):
        angle = start + 2 * math.pi * index / count + rng.uniform(-0.25, 0.25)
        distance = rng.uniform(0.45, 0.55) * body.radius_px
        reach = rng.uniform(0.95, 0.99) * half_height  # how far past the stack centre the lobe goes
        middle = rng.uniform(0.5, 0.6) * half_height
        lobes.append(
            Blob(
                body.centre_x_px + distance * math.cos(angle),
                body.centre_y_px + distance * math.sin(angle),
                rng.uniform(0.26, 0.33) * body.radius_px,
                body.z_centre + side * middle,
                reach - middle,
                harmonics=_harmonics(rng, (0.06, 0.03)),
                flatness=rng.uniform(1.8, 2.4),
            )
        )
    return lobes


def _nucleolus(rng: np.random.Generator, body: Blob, half_height: float) -> Blob:
    shift, angle = rng.uniform(0, 0.12) * body.radius_px, rng.uniform(0, 2 * math.pi)
    return Blob(
        body.centre_x_px + shift * math.cos(angle),
        body.centre_y_px + shift * math.sin(angle),
        rng.uniform(0.2, 0.3) * body.radius_px,
        body.z_centre + rng.uniform(-0.15, 0.15) * half_height,
        rng.uniform(0.35, 0.6) * half_height,
        harmonics=_harmonics(rng, (0.1, 0.07, 0.05)),
    )


def _place_organelles(
    rng: np.random.Generator,
    body: Blob,
    lobes: tuple[Blob, ...],
    shape_px: tuple[int, int],
    n_slices: int,
    scale: float,
) -> tuple[Organelle, ...]:
    """Three to eight organelles in the cytoplasm: each orbit keeps clear of the nucleus' widest
    extent; positions that leave the image or meet another organelle are drawn again."""
    reach = max(
        math.hypot(b.centre_x_px - body.centre_x_px, b.centre_y_px - body.centre_y_px) + b.max_extent_px
        for b in (body, *lobes)
    )
    wanted = int(rng.integers(3, 9))
    placed: list[Organelle] = []
    samples = np.linspace(0, max(n_slices - 1, 0), 9)
    for _ in range(wanted * 60):
        if len(placed) == wanted:
            break
        candidate = _random_organelle(rng, reach, n_slices, scale)
        if _fits(candidate, placed, body, shape_px, samples):
            placed.append(candidate)
    return tuple(placed)


def _reach(blob: Blob, body: Blob, n_slices: int) -> float:
    """How far from the body's centre ``blob`` reaches in any slice of the stack."""
    shift = math.hypot(blob.centre_x_px - body.centre_x_px, blob.centre_y_px - body.centre_y_px)
    tables = (blob.radius_table(z) for z in range(n_slices))
    return shift + max((float(t.max()) for t in tables if t is not None), default=0.0)


def _random_organelle(rng: np.random.Generator, reach_px: float, n_slices: int, scale: float) -> Organelle:
    semi_major = rng.uniform(20, 45) * scale
    semi_minor = min(semi_major, rng.uniform(9, 18) * scale)
    span = max(n_slices, 1)
    return Organelle(
        orbit_px=reach_px + semi_major + 12 * scale + rng.uniform(0, 260) * scale,
        angle_rad=rng.uniform(0, 2 * math.pi),
        angle_drift_rad=rng.uniform(-0.5, 0.5) / span,
        semi_major_px=semi_major,
        semi_minor_px=semi_minor,
        orientation_rad=rng.uniform(0, math.pi),
        orientation_drift_rad=rng.uniform(-1.0, 1.0) / span,
        size_phase_rad=rng.uniform(0, 2 * math.pi),
    )


def _fits(
    candidate: Organelle, placed: list[Organelle], body: Blob, shape_px: tuple[int, int], samples: NDArray[np.float64]
) -> bool:
    height, width = shape_px
    origin = (body.centre_x_px, body.centre_y_px)
    for z in samples:
        x, y = candidate.centre(*origin, float(z))
        margin = candidate.semi_major_px + 3
        if not (margin <= x <= width - 1 - margin and margin <= y <= height - 1 - margin):
            return False
        for other in placed:
            ox, oy = other.centre(*origin, float(z))
            if math.hypot(x - ox, y - oy) < candidate.semi_major_px + other.semi_major_px + 6:
                return False
    return True


# --- rasterising ------------------------------------------------------------------------------------


def _bin_angles() -> NDArray[np.float64]:
    return np.asarray(-math.pi + (np.arange(ANGLE_BINS) + 0.5) * (2 * math.pi / ANGLE_BINS), dtype=np.float64)


def _polar_grid(blob: Blob, shape_px: tuple[int, int]) -> _PolarGrid:
    height, width = shape_px
    extent = blob.max_extent_px + 2
    r0, r1 = max(0, math.floor(blob.centre_y_px - extent)), min(height, math.ceil(blob.centre_y_px + extent) + 1)
    c0, c1 = max(0, math.floor(blob.centre_x_px - extent)), min(width, math.ceil(blob.centre_x_px + extent) + 1)
    dy = (np.arange(r0, r1, dtype=np.float64) - blob.centre_y_px)[:, None]
    dx = (np.arange(c0, c1, dtype=np.float64) - blob.centre_x_px)[None, :]
    angle = np.arctan2(dy, dx)
    bins = np.floor((angle + math.pi) * (ANGLE_BINS / (2 * math.pi))).astype(np.intp) % ANGLE_BINS
    return _PolarGrid(r0, c0, np.hypot(dx, dy).astype(np.float32), bins)


def _paint(mask: Mask, grid: _PolarGrid, table: NDArray[np.float64]) -> None:
    rows, cols = grid.radius_px.shape
    inside = grid.radius_px <= table.astype(np.float32)[grid.angle_bin]
    mask[grid.row0 : grid.row0 + rows, grid.col0 : grid.col0 + cols] |= inside


def _ellipse_mask(shape_px: tuple[int, int], organelle: Organelle, origin: tuple[float, float], z: int) -> Mask:
    mask = np.zeros(shape_px, dtype=np.bool_)
    height, width = shape_px
    x, y = organelle.centre(*origin, z)
    major, minor = organelle.axes(z)
    r0, r1 = max(0, math.floor(y - major)), min(height, math.ceil(y + major) + 1)
    c0, c1 = max(0, math.floor(x - major)), min(width, math.ceil(x + major) + 1)
    if r0 >= r1 or c0 >= c1:
        return mask
    dy = (np.arange(r0, r1, dtype=np.float64) - y)[:, None]
    dx = (np.arange(c0, c1, dtype=np.float64) - x)[None, :]
    angle = organelle.orientation_rad + organelle.orientation_drift_rad * z
    along = dx * math.cos(angle) + dy * math.sin(angle)
    across = -dx * math.sin(angle) + dy * math.cos(angle)
    mask[r0:r1, c0:c1] = (along / major) ** 2 + (across / minor) ** 2 <= 1.0
    return mask
