"""Geometry of a synthetic SBF-SEM volume of HeLa cells in resin: where every cell, nucleus, nucleolus
and organelle lies in each slice.

Coordinates are level-0 voxels: x and y are pixel centres at integer coordinates, z is a slice index.
Sizes are drawn in nanometres and converted with the voxel size, so a coarser volume shows the same
kind of cells with fewer pixels.

Cells sit on a jittered grid (in z too, when the volume is deeper than a cell), apart, with resin
between them as in a pellet. Each nucleus is drawn by
:func:`etchacell_loop.simulation.shapes.nucleus_blobs`: an irregular body whose lobes reach past its
top and bottom, so slices near a cap, where the envelope lies almost parallel to the cut, show several
islands. Some nuclei also get a deep invagination (a notch cutting most of the way in) and
cytoplasmic channels crossing them in z (holes, each lined by envelope). Around the nucleus the
cytoplasm holds the look-alikes volunteers and models confuse with the envelope: mitochondria (tubes
cut obliquely, with cristae), ER sheets (some following the envelope 80-300 nm out),
vesicles and lipid droplets. One cell may be in mitosis: its chromatin is condensed, it has no
nucleolus and its envelope is broken into fragments.

:meth:`VolumeModel.slice_geometry` turns the model into one slice's label images and signed distances
to each boundary; :mod:`etchacell_loop.imaging.synth_render` makes the image from them and the truth
is read straight off them. Polar grids of the large outlines are computed once per model, so a slice
costs a table lookup per pixel plus one distance transform around each nucleus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from etchacell_loop.simulation.shapes import ANGLE_BINS, Blob, Harmonic, Notch, nucleus_blobs

OrganelleKind = Literal["mitochondrion", "lipid_droplet", "vesicle", "er"]
ORGANELLE_KINDS: tuple[OrganelleKind, ...] = ("mitochondrion", "lipid_droplet", "vesicle", "er")
MAX_ORGANELLES = 65535  # organelle ids are uint16; a volume with more keeps the first ones drawn
FAR_PX = 64.0  # the distance kept where no boundary is near
ENVELOPE_WIDTH_NM = 70.0  # the truth band, as CRIA draws it from consensus
CELL_SLOT_NM = 5600.0  # one cell per slot of this size by default

Float = NDArray[np.float32]
Labels = NDArray[np.uint16]
Mask = NDArray[np.bool_]


# --- the model ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Channel:
    """A cytoplasmic channel through the nucleus, cut across: a disc of ``radius_px`` whose centre
    drifts by (``dx_px``, ``dy_px``) per slice, over ``z_centre ± z_half_height`` slices (tapered)."""

    x_px: float
    y_px: float
    dx_px: float
    dy_px: float
    radius_px: float
    z_centre: float
    z_half_height: float

    def disc(self, z: float) -> tuple[float, float, float] | None:
        """(x, y, radius) of the channel in slice z, or None where it is absent."""
        u = (z - self.z_centre) / self.z_half_height
        if abs(u) >= 1.0:
            return None
        dz = z - self.z_centre
        return self.x_px + self.dx_px * dz, self.y_px + self.dy_px * dz, self.radius_px * (1 - u**4) ** 0.25


@dataclass(frozen=True)
class Fragment:
    """A piece of envelope left in a mitotic cell: the arc ``start_rad … start_rad + span_rad`` seen
    from the nucleus centre, turning by ``drift_rad`` per slice."""

    start_rad: float
    span_rad: float
    drift_rad: float

    def covers(self, angle_rad: NDArray[np.float64], z: float) -> Mask:
        offset = np.mod(angle_rad - self.start_rad - self.drift_rad * z, 2 * math.pi)
        return np.asarray(offset < self.span_rad)


@dataclass(frozen=True, eq=False)
class Cell:
    """One cell: its plasma membrane (``outline``), its nucleus (``body`` and cap ``lobes``, less the
    ``channels``), the nucleolus, and the nuclear pores as (angle from the body centre, slice) pairs."""

    label: int
    outline: Blob
    body: Blob
    lobes: tuple[Blob, ...]
    nucleolus: Blob
    channels: tuple[Channel, ...]
    pore_angle_rad: NDArray[np.float64]
    pore_z: NDArray[np.float64]
    mitotic: bool = False
    fragments: tuple[Fragment, ...] = ()

    @property
    def nucleus_blobs(self) -> tuple[Blob, ...]:
        return (self.body, *self.lobes)


@dataclass(frozen=True, eq=False)
class Section:
    """An organelle cut by one slice, over the box whose corner is (``row0``, ``col0``):
    ``distance_px`` is the signed distance to its boundary (positive inside); ``cristae`` (0-1,
    mitochondria only) says where the inner membrane folds across the matrix."""

    row0: int
    col0: int
    distance_px: Float
    cristae: Float | None = None


class Organelle(Protocol):
    """What a slice needs of an organelle: its class, its slices, and its section in each."""

    @property
    def kind(self) -> OrganelleKind: ...

    @property
    def cell_label(self) -> int: ...

    def z_range(self) -> tuple[float, float]: ...

    def section(self, z: int) -> Section | None: ...


@dataclass(frozen=True)
class Mitochondrion:
    """A tube cut obliquely: an elliptical section drifting and turning from slice to slice, tapered
    at its ends, with cristae across its short axis every ``cristae_period_px``."""

    cell_label: int
    x_px: float
    y_px: float
    dx_px: float
    dy_px: float
    z_centre: float
    z_half_height: float
    semi_major_px: float
    semi_minor_px: float
    orientation_rad: float
    turn_rad: float
    cristae_period_px: float
    cristae_phase: float
    kind: OrganelleKind = "mitochondrion"

    def z_range(self) -> tuple[float, float]:
        return self.z_centre - self.z_half_height, self.z_centre + self.z_half_height

    def section(self, z: int) -> Section | None:
        u = (z - self.z_centre) / self.z_half_height
        if abs(u) >= 1.0:
            return None
        taper = (1 - u**4) ** 0.25
        major, minor = self.semi_major_px * taper, self.semi_minor_px * taper
        if minor < 1.5:
            return None
        dz = z - self.z_centre
        x, y = self.x_px + self.dx_px * dz, self.y_px + self.dy_px * dz
        row0, col0, dy, dx = _box(x, y, major + 2)
        angle = self.orientation_rad + self.turn_rad * dz
        along = dx * math.cos(angle) + dy * math.sin(angle)
        across = -dx * math.sin(angle) + dy * math.cos(angle)
        distance = _ellipse_distance(along, across, major, minor)
        phase = along / self.cristae_period_px + self.cristae_phase
        to_line = np.abs(phase - np.round(phase)) * self.cristae_period_px
        reach = np.abs(across) < minor * (0.55 + 0.3 * np.cos(3.0 * phase))  # cristae rarely span it all
        cristae = np.exp(-0.5 * (to_line / 0.8) ** 2) * (reach & (distance > 3.0))
        return Section(row0, col0, distance, cristae.astype(np.float32))


@dataclass(frozen=True)
class Sphere:
    """A vesicle or lipid droplet: a sphere of ``radius_px`` (in-plane pixels); ``z_scale`` is the
    slice spacing in in-plane pixels, so its sections shrink towards its poles."""

    cell_label: int
    kind: OrganelleKind
    x_px: float
    y_px: float
    z_centre: float
    radius_px: float
    z_scale: float

    def z_range(self) -> tuple[float, float]:
        half = self.radius_px / self.z_scale
        return self.z_centre - half, self.z_centre + half

    def section(self, z: int) -> Section | None:
        dz_px = (z - self.z_centre) * self.z_scale
        if abs(dz_px) >= self.radius_px:
            return None
        radius = math.sqrt(self.radius_px**2 - dz_px**2)
        if radius < 1.0:
            return None
        row0, col0, dy, dx = _box(self.x_px, self.y_px, radius + 2)
        return Section(row0, col0, (radius - np.hypot(dx, dy)).astype(np.float32))


@dataclass(frozen=True)
class ErSheet:
    """An ER sheet cut across: a band ``2 · half_width_px`` wide along an arc seen from
    (``x_px``, ``y_px``), from ``start_rad`` over ``span_rad``. The arc's radius is ``radius_px``
    (gently waved), or, when ``follows`` is set, that nucleus body's outline plus ``radius_px``: the
    perinuclear sheets that run beside the envelope."""

    cell_label: int
    x_px: float
    y_px: float
    radius_px: float
    start_rad: float
    span_rad: float
    drift_rad: float
    half_width_px: float
    z_centre: float
    z_half_height: float
    wave: float
    wave_phase: float
    follows: Blob | None = None
    kind: OrganelleKind = "er"

    def z_range(self) -> tuple[float, float]:
        return self.z_centre - self.z_half_height, self.z_centre + self.z_half_height

    def section(self, z: int) -> Section | None:
        if abs(z - self.z_centre) >= self.z_half_height:
            return None
        start = self.start_rad + self.drift_rad * (z - self.z_centre)
        midline = self._midline(z)
        if midline is None:
            return None
        theta = start + np.linspace(0.0, self.span_rad, 64)
        bins = _angle_bins(theta)
        xs = self.x_px + midline[bins] * np.cos(theta)
        ys = self.y_px + midline[bins] * np.sin(theta)
        pad = self.half_width_px + 2
        row0, col0 = math.floor(ys.min() - pad), math.floor(xs.min() - pad)
        rows, cols = math.ceil(ys.max() + pad) - row0 + 1, math.ceil(xs.max() + pad) - col0 + 1
        dy = (np.arange(row0, row0 + rows, dtype=np.float32) - self.y_px)[:, None]
        dx = (np.arange(col0, col0 + cols, dtype=np.float32) - self.x_px)[None, :]
        angle = np.arctan2(dy, dx)
        along = np.mod(angle - start, 2 * math.pi)
        offset = np.abs(np.hypot(dx, dy) - midline[_angle_bins(angle)])
        # the sheet's ends are rounded off: the band thins over its last few pixels of arc
        end_px = np.minimum(along, self.span_rad - along) * np.maximum(midline[_angle_bins(angle)], 1.0)
        width = self.half_width_px * np.sqrt(np.clip(end_px / (2 * self.half_width_px), 0.0, 1.0))
        distance = np.where(along <= self.span_rad, width - offset, -FAR_PX)
        return Section(row0, col0, distance.astype(np.float32))

    def _midline(self, z: int) -> NDArray[np.float64] | None:
        theta = _bin_centres()
        if self.follows is None:
            return self.radius_px * (1.0 + self.wave * np.cos(3.0 * theta + self.wave_phase))
        body = self.follows.radius_table(z)
        return None if body is None else body + self.radius_px


@dataclass(frozen=True, eq=False)
class SliceGeometry:
    """One slice, as label images and signed distances (pixels, positive inside the structure).

    ``cell``/``nucleus``: instance labels (0 = resin / not nucleus); ``envelope``: the truth band;
    ``envelope_visibility``: 1 where the double membrane is there, less at nuclear pores and 0 in the
    breaks of a mitotic envelope; ``mitotic``: the chromatin of a cell in mitosis; ``nucleolus``:
    labelled with its nucleus' id; ``organelles``: instance ids with ``organelle_kind`` (index into
    :data:`ORGANELLE_KINDS`, plus one; 0 = none); ``cristae``: 0-1 inside mitochondria.
    """

    z: int
    cell: Labels
    cell_distance_px: Float
    nucleus: Labels
    nucleus_distance_px: Float
    envelope: Mask
    envelope_visibility: Float
    mitotic: Mask
    nucleolus: Labels
    organelles: Labels
    organelle_distance_px: Float
    organelle_kind: NDArray[np.uint8]
    cristae: Float


@dataclass(frozen=True, eq=False)
class VolumeModel:
    """A whole synthetic volume: its cells and their organelles (organelle id = index + 1)."""

    shape: tuple[int, int, int]
    voxel_size_nm: tuple[float, float, float]
    cells: tuple[Cell, ...]
    organelles: tuple[Organelle, ...]

    @property
    def envelope_band_px(self) -> tuple[int, int]:
        """Pixels of the envelope band inside and outside the nucleus boundary (4 and 3 at 10 nm)."""
        width = max(1, round(ENVELOPE_WIDTH_NM / self.voxel_size_nm[2]))
        return (width + 1) // 2, width // 2

    @cached_property
    def _organelle_z(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        ranges = np.array([o.z_range() for o in self.organelles], dtype=np.float64).reshape(-1, 2)
        return ranges[:, 0], ranges[:, 1]

    @cached_property
    def _cell_grids(self) -> tuple[_PolarGrid, ...]:
        return tuple(_polar_grid(c.outline, self.shape[1:]) for c in self.cells)

    @cached_property
    def _nucleus_grids(self) -> tuple[tuple[_PolarGrid, ...], ...]:
        return tuple(tuple(_polar_grid(b, self.shape[1:]) for b in c.nucleus_blobs) for c in self.cells)

    @cached_property
    def _nucleolus_grids(self) -> tuple[_PolarGrid, ...]:
        return tuple(_polar_grid(c.nucleolus, self.shape[1:]) for c in self.cells)

    def slice_geometry(self, z: int) -> SliceGeometry:
        """Everything slice ``z`` shows, as label images and distances."""
        shape = self.shape[1:]
        geometry = SliceGeometry(
            z=z,
            cell=np.zeros(shape, np.uint16),
            cell_distance_px=np.full(shape, -FAR_PX, np.float32),
            nucleus=np.zeros(shape, np.uint16),
            nucleus_distance_px=np.full(shape, -FAR_PX, np.float32),
            envelope=np.zeros(shape, np.bool_),
            envelope_visibility=np.ones(shape, np.float32),
            mitotic=np.zeros(shape, np.bool_),
            nucleolus=np.zeros(shape, np.uint16),
            organelles=np.zeros(shape, np.uint16),
            organelle_distance_px=np.full(shape, -FAR_PX, np.float32),
            organelle_kind=np.zeros(shape, np.uint8),
            cristae=np.zeros(shape, np.float32),
        )
        for index, cell in enumerate(self.cells):
            self._paint_cell(geometry, index, cell)
            self._paint_nucleus(geometry, index, cell)
        self._paint_organelles(geometry)
        return geometry

    def _paint_cell(self, geometry: SliceGeometry, index: int, cell: Cell) -> None:
        table = cell.outline.radius_table(geometry.z)
        if table is None:
            return
        grid = self._cell_grids[index]
        window = grid.window
        distance = table.astype(np.float32)[grid.angle_bin] - grid.radius_px
        np.maximum(geometry.cell_distance_px[window], distance, out=geometry.cell_distance_px[window])
        geometry.cell[window][distance > 0] = cell.label

    def _paint_nucleus(self, geometry: SliceGeometry, index: int, cell: Cell) -> None:
        z = geometry.z
        present = [
            (grid, table)
            for blob, grid in zip(cell.nucleus_blobs, self._nucleus_grids[index], strict=True)
            if (table := blob.radius_table(z)) is not None
        ]
        if not present:
            return
        inside_px, outside_px = self.envelope_band_px
        pad = max(outside_px, 12) + 2
        height, width = self.shape[1:]
        row0, col0 = max(0, min(g.row0 for g, _ in present) - pad), max(0, min(g.col0 for g, _ in present) - pad)
        row1 = min(height, max(g.row0 + g.radius_px.shape[0] for g, _ in present) + pad)
        col1 = min(width, max(g.col0 + g.radius_px.shape[1] for g, _ in present) + pad)
        mask = np.zeros((row1 - row0, col1 - col0), np.bool_)
        for grid, table in present:
            r, c = grid.row0 - row0, grid.col0 - col0
            rows, cols = grid.radius_px.shape
            mask[r : r + rows, c : c + cols] |= grid.radius_px <= table.astype(np.float32)[grid.angle_bin]
        _carve_channels(mask, cell.channels, z, row0, col0)
        if not mask.any():
            return
        inside = ndimage.distance_transform_edt(mask).astype(np.float32)
        outside = ndimage.distance_transform_edt(~mask).astype(np.float32)
        signed = np.where(mask, inside - 0.5, 0.5 - outside)
        window = np.s_[row0:row1, col0:col1]
        np.maximum(geometry.nucleus_distance_px[window], signed, out=geometry.nucleus_distance_px[window])
        geometry.nucleus[window][mask] = cell.label
        band = np.where(mask, inside <= inside_px, outside <= outside_px)
        near = np.abs(signed) < 10.0
        rows_near, cols_near = np.nonzero(near)
        dy = rows_near + row0 - cell.body.centre_y_px
        dx = cols_near + col0 - cell.body.centre_x_px
        angle = np.arctan2(dy, dx)
        if cell.mitotic:
            kept = np.zeros(angle.shape, np.bool_)
            for fragment in cell.fragments:
                kept |= fragment.covers(angle, z)
            visibility = kept.astype(np.float32)
            band[rows_near, cols_near] &= kept
            geometry.mitotic[window] |= mask
        else:
            visibility = _pore_visibility(angle, np.hypot(dx, dy), cell, z, self.voxel_size_nm[2])
        geometry.envelope_visibility[window][rows_near, cols_near] = visibility
        geometry.envelope[window] |= band
        if not cell.mitotic:
            grid = self._nucleolus_grids[index]
            table = cell.nucleolus.radius_table(z)
            if table is not None:
                self._paint_nucleolus(geometry, grid, table, cell.label)

    def _paint_nucleolus(
        self, geometry: SliceGeometry, grid: _PolarGrid, table: NDArray[np.float64], label: int
    ) -> None:
        """The nucleolus where its blob is, and at least 150 nm inside its own nucleus."""
        margin_px = 150.0 / self.voxel_size_nm[2]
        window = grid.window
        inside = grid.radius_px <= table.astype(np.float32)[grid.angle_bin]
        inside &= (geometry.nucleus[window] == label) & (geometry.nucleus_distance_px[window] >= margin_px)
        geometry.nucleolus[window][inside] = label

    def _paint_organelles(self, geometry: SliceGeometry) -> None:
        """Each organelle present in the slice, kept to its own cell's cytoplasm (a few pixels clear
        of the nucleus); later ones cover earlier ones where they meet."""
        z = geometry.z
        low, high = self._organelle_z
        clearance_px = 60.0 / self.voxel_size_nm[2]
        height, width = self.shape[1:]
        for index in np.flatnonzero((low <= z) & (z <= high)):
            organelle = self.organelles[index]
            section = organelle.section(z)
            if section is None:
                continue
            rows, cols = section.distance_px.shape
            r0, c0 = max(0, section.row0), max(0, section.col0)
            r1, c1 = min(height, section.row0 + rows), min(width, section.col0 + cols)
            if r0 >= r1 or c0 >= c1:
                continue
            local = np.s_[r0 - section.row0 : r1 - section.row0, c0 - section.col0 : c1 - section.col0]
            window = np.s_[r0:r1, c0:c1]
            distance = section.distance_px[local]
            inside = (distance > 0) & (geometry.cell[window] == organelle.cell_label)
            inside &= geometry.nucleus_distance_px[window] < -clearance_px
            if not inside.any():
                continue
            geometry.organelles[window][inside] = index + 1
            geometry.organelle_kind[window][inside] = ORGANELLE_KINDS.index(organelle.kind) + 1
            geometry.organelle_distance_px[window][inside] = distance[inside]
            cristae = section.cristae[local][inside] if section.cristae is not None else 0.0
            geometry.cristae[window][inside] = cristae


# --- drawing a random volume -------------------------------------------------------------------------


@dataclass(frozen=True)
class OrganelleDensity:
    """How many sections of each organelle a slice shows per square micrometre of cytoplasm."""

    mitochondria_per_um2: float = 0.9
    er_per_um2: float = 0.9
    perinuclear_er_per_slice: float = 3.0
    vesicles_per_um2: float = 1.6
    lipid_droplets_per_um2: float = 0.06


def default_cell_count(shape: tuple[int, int, int], voxel_size_nm: tuple[float, float, float]) -> int:
    """One cell per :data:`CELL_SLOT_NM` square in each layer (three for 1024 x 1024 at 10 nm)."""
    z, y, x = shape
    area = (y * voxel_size_nm[1] / CELL_SLOT_NM) * (x * voxel_size_nm[2] / CELL_SLOT_NM)
    return max(1, round(area)) * _layer_count(z, voxel_size_nm[0])


def draw_volume(
    seed: int,
    shape: tuple[int, int, int],
    voxel_size_nm: tuple[float, float, float] = (50.0, 10.0, 10.0),
    cells: int | None = None,
    mitotic: bool = False,
    density: OrganelleDensity | None = None,
) -> VolumeModel:
    """A random volume of ``cells`` cells (default :func:`default_cell_count`); with ``mitotic`` and
    at least two cells, the last one is in mitosis. The same seed always draws the same volume."""
    _, height, width = shape
    if min(shape) < 1 or height < 32 or width < 32:
        raise ValueError(f"a volume needs at least 1 x 32 x 32 voxels, not {' x '.join(map(str, shape))}")
    count = default_cell_count(shape, voxel_size_nm) if cells is None else cells
    if count < 1:
        raise ValueError(f"a volume needs at least one cell, not {count}")
    rng = np.random.default_rng([seed, 1])
    density = density or OrganelleDensity()
    drawn: list[Cell] = []
    organelles: list[Organelle] = []
    for index, slot in enumerate(_cell_slots(rng, shape, voxel_size_nm[0], count)):
        cell = _draw_cell(rng, index + 1, slot, voxel_size_nm, mitotic and count >= 2 and index == count - 1)
        drawn.append(cell)
        organelles.extend(_draw_organelles(rng, cell, slot, voxel_size_nm, density))
    return VolumeModel(shape, voxel_size_nm, tuple(drawn), tuple(organelles[:MAX_ORGANELLES]))


@dataclass(frozen=True)
class _Slot:
    """Where a cell may go: centre, the room around it (pixels) and its layer's slices."""

    x_px: float
    y_px: float
    room_px: float
    z_start: float
    z_stop: float
    whole_depth: bool  # the only layer: the cell crosses the volume


def _layer_count(n_slices: int, z_nm: float) -> int:
    return max(1, round(n_slices * z_nm / CELL_SLOT_NM))


def _cell_slots(rng: np.random.Generator, shape: tuple[int, int, int], z_nm: float, count: int) -> list[_Slot]:
    """``count`` slots of a jittered grid, layers in z when the volume is deeper than a cell."""
    n_slices, height, width = shape
    layers = min(_layer_count(n_slices, z_nm), count)
    per_layer = math.ceil(count / layers)
    cols = max(1, math.ceil(math.sqrt(per_layer * width / height)))
    rows = math.ceil(per_layer / cols)
    slot_h, slot_w = height / rows, width / cols
    chosen = np.sort(rng.permutation(layers * rows * cols)[:count])
    slots = []
    for slot in chosen:
        layer, rest = divmod(int(slot), rows * cols)
        row, col = divmod(rest, cols)
        jitter = rng.uniform(-0.03, 0.03, size=2)
        slots.append(
            _Slot(
                x_px=(col + 0.5 + jitter[0]) * slot_w,
                y_px=(row + 0.5 + jitter[1]) * slot_h,
                room_px=0.5 * min(slot_w, slot_h) * 0.94,
                z_start=layer * n_slices / layers,
                z_stop=(layer + 1) * n_slices / layers,
                whole_depth=layers == 1,
            )
        )
    return slots


def _draw_cell(
    rng: np.random.Generator, label: int, slot: _Slot, voxel_size_nm: tuple[float, float, float], mitotic: bool
) -> Cell:
    z_nm, _, xy_nm = voxel_size_nm
    depth = slot.z_stop - slot.z_start
    z_mid = (slot.z_start + slot.z_stop - 1) / 2
    outline = Blob(
        slot.x_px,
        slot.y_px,
        1.0,
        z_mid,
        50.0 * depth if slot.whole_depth else 0.49 * depth,
        harmonics=(
            *_harmonics(rng, (0.07, 0.05, 0.03)),
            *_harmonics(rng, (0.015, 0.012, 0.01), first_order=9),
        ),
        flatness=6.0,
    )
    cell_radius = slot.room_px / outline.max_extent_px
    outline = replace(outline, radius_px=cell_radius)
    smallest_cell = cell_radius * (1 - sum(abs(h.amplitude) + abs(h.amplitude_drift) for h in outline.harmonics))
    radius = cell_radius * rng.uniform(0.6, 0.68) * (0.8 if mitotic else 1.0)
    half_height = min(radius * xy_nm * rng.uniform(0.75, 0.95) / z_nm, 0.45 * depth)
    lowest, highest = slot.z_start + half_height, slot.z_stop - 1 - half_height
    z_centre = rng.uniform(lowest, highest) if highest > lowest else z_mid
    room = smallest_cell - 250.0 / xy_nm  # cytoplasm at least 250 nm wide
    for _ in range(6):
        body, lobes, nucleolus = nucleus_blobs(rng, slot.x_px, slot.y_px, radius, z_centre, half_height)
        reach = max(math.hypot(b.centre_x_px - slot.x_px, b.centre_y_px - slot.y_px) + b.max_extent_px for b in lobes)
        reach = max(reach, body.max_extent_px)
        if reach <= room:
            break
        radius *= 0.9 * room / reach
    if mitotic:
        return Cell(
            label,
            outline,
            replace(body, harmonics=body.harmonics[:2], notches=()),
            (),
            nucleolus,
            (),
            np.zeros(0),
            np.zeros(0),
            mitotic=True,
            fragments=_fragments(rng),
        )
    body = replace(body, notches=body.notches + _deep_invagination(rng, body))
    pore_angle, pore_z = _pores(rng, body, voxel_size_nm)
    return Cell(label, outline, body, lobes, nucleolus, _channels(rng, body, xy_nm), pore_angle, pore_z)


def _harmonics(rng: np.random.Generator, largest: tuple[float, ...], first_order: int = 2) -> tuple[Harmonic, ...]:
    return tuple(
        Harmonic(
            order=first_order + offset,
            amplitude=(amplitude := rng.uniform(0.3, 1.0) * bound),
            phase_rad=rng.uniform(0, 2 * math.pi),
            amplitude_drift=rng.uniform(-0.5, 0.5) * amplitude,
            phase_drift_rad=rng.uniform(-0.4, 0.4),
        )
        for offset, bound in enumerate(largest)
    )


def _deep_invagination(rng: np.random.Generator, body: Blob) -> tuple[Notch, ...]:
    """Half the nuclei get a cleft reaching 60-80 % of the way to the centre through part of z."""
    if rng.uniform() < 0.5:
        return ()
    return (
        Notch(
            angle_rad=rng.uniform(-math.pi, math.pi),
            depth=rng.uniform(0.6, 0.8),
            width_rad=rng.uniform(0.06, 0.12),
            z_centre=body.z_centre + rng.uniform(-0.3, 0.3) * body.z_half_height,
            z_spread=rng.uniform(0.25, 0.5) * body.z_half_height,
        ),
    )


def _channels(rng: np.random.Generator, body: Blob, xy_nm: float) -> tuple[Channel, ...]:
    """None to two cytoplasmic channels crossing the nucleus in z, 150-350 nm across."""
    channels = []
    for _ in range(int(rng.choice([0, 1, 1, 2]))):
        distance, angle = rng.uniform(0.15, 0.5) * body.radius_px, rng.uniform(0, 2 * math.pi)
        channels.append(
            Channel(
                x_px=body.centre_x_px + distance * math.cos(angle),
                y_px=body.centre_y_px + distance * math.sin(angle),
                dx_px=rng.uniform(-1.5, 1.5),
                dy_px=rng.uniform(-1.5, 1.5),
                radius_px=rng.uniform(75, 175) / xy_nm,
                z_centre=body.z_centre + rng.uniform(-0.4, 0.4) * body.z_half_height,
                z_half_height=rng.uniform(0.2, 0.5) * body.z_half_height,
            )
        )
    return tuple(channels)


def _pores(
    rng: np.random.Generator, body: Blob, voxel_size_nm: tuple[float, float, float]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Nuclear pores: about one per 600 nm of envelope in each slice, each seen in about two slices."""
    z_nm, _, xy_nm = voxel_size_nm
    perimeter_nm = 2 * math.pi * body.radius_px * xy_nm
    slices_seen = max(1.0, 100.0 / z_nm)
    count = int(perimeter_nm / 600.0 * (2 * body.z_half_height + 2) / slices_seen * 1.3)
    low = body.z_centre - body.z_half_height * 1.2
    high = body.z_centre + body.z_half_height * 1.2
    return rng.uniform(-math.pi, math.pi, count), rng.uniform(low, high, count)


def _pore_visibility(
    angle: NDArray[np.float64], radius_px: NDArray[np.float64], cell: Cell, z: int, xy_nm: float
) -> Float:
    """1 along the envelope, dropping towards 0.1 across the 100 nm of a pore cut by this slice."""
    present = np.abs(cell.pore_z - z) < 1.0
    visibility = np.ones(angle.shape, np.float32)
    sigma_px = 35.0 / xy_nm
    for pore_angle in cell.pore_angle_rad[present]:
        offset = np.angle(np.exp(1j * (angle - pore_angle))) * np.maximum(radius_px, 1.0)
        visibility = np.minimum(visibility, 1 - 0.9 * np.exp(-0.5 * (offset / sigma_px) ** 2)).astype(np.float32)
    return visibility


def _fragments(rng: np.random.Generator) -> tuple[Fragment, ...]:
    """What is left of a mitotic envelope: four to eight arcs covering about a third of the outline."""
    count = int(rng.integers(4, 9))
    return tuple(
        Fragment(
            start_rad=rng.uniform(0, 2 * math.pi),
            span_rad=rng.uniform(0.15, 0.45),
            drift_rad=rng.uniform(-0.05, 0.05),
        )
        for _ in range(count)
    )


def _draw_organelles(
    rng: np.random.Generator,
    cell: Cell,
    slot: _Slot,
    voxel_size_nm: tuple[float, float, float],
    density: OrganelleDensity,
) -> list[Organelle]:
    """Organelles for one cell, in painting order (later ones cover earlier ones): vesicles, ER,
    lipid droplets, mitochondria. Counts follow ``density`` for the cell's cytoplasm and slices."""
    z_nm, _, xy_nm = voxel_size_nm
    inner, outer = cell.body.radius_px * 1.05, cell.outline.radius_px * 0.95
    area_um2 = math.pi * (outer**2 - inner**2) * (xy_nm / 1000.0) ** 2
    slices = slot.z_stop - slot.z_start
    z_scale = z_nm / xy_nm

    reach = max(
        [cell.body.max_extent_px]
        + [
            math.hypot(b.centre_x_px - cell.body.centre_x_px, b.centre_y_px - cell.body.centre_y_px) + b.max_extent_px
            for b in cell.lobes
        ]
    )

    def place(size_px: float = 0.0) -> tuple[float, float, float]:
        """A point of the cytoplasm at least ``size_px`` clear of the nucleus' widest reach, where
        the room allows."""
        low = min(max(inner, reach + size_px), outer)
        angle = rng.uniform(0, 2 * math.pi)
        radius = math.sqrt(rng.uniform(low**2, outer**2))
        x = cell.outline.centre_x_px + radius * math.cos(angle)
        return x, cell.outline.centre_y_px + radius * math.sin(angle), rng.uniform(slot.z_start, slot.z_stop)

    def count(per_um2: float, mean_slices: float) -> int:
        return int(rng.poisson(per_um2 * area_um2 * (slices + mean_slices) / mean_slices))

    drawn: list[Organelle] = []
    for _ in range(count(density.vesicles_per_um2, 2 * 60.0 / z_nm)):
        x, y, z = place()
        drawn.append(Sphere(cell.label, "vesicle", x, y, z, rng.uniform(35, 90) / xy_nm, z_scale))
    for _ in range(count(density.er_per_um2, 2 * 400.0 / z_nm)):
        x, y, z = place()
        drawn.append(_er_sheet(rng, cell.label, x, y, z, voxel_size_nm, None))
    if not cell.mitotic:
        per_slice = density.perinuclear_er_per_slice
        for _ in range(int(rng.poisson(per_slice * (slices + 16.0) / 16.0 * z_nm / 50.0))):
            z = rng.uniform(slot.z_start, slot.z_stop)
            drawn.append(
                _er_sheet(rng, cell.label, cell.body.centre_x_px, cell.body.centre_y_px, z, voxel_size_nm, cell.body)
            )
    for _ in range(count(density.lipid_droplets_per_um2, 2 * 300.0 / z_nm)):
        radius = rng.uniform(180, 420) / xy_nm
        x, y, z = place(radius)
        drawn.append(Sphere(cell.label, "lipid_droplet", x, y, z, radius, z_scale))
    for _ in range(count(density.mitochondria_per_um2, 2 * 900.0 / z_nm)):
        minor = rng.uniform(90, 170) / xy_nm
        major = minor * rng.uniform(1.1, 3.0)
        x, y, z = place(major)
        drawn.append(
            Mitochondrion(
                cell_label=cell.label,
                x_px=x,
                y_px=y,
                dx_px=rng.uniform(-4, 4) * z_scale / 5,
                dy_px=rng.uniform(-4, 4) * z_scale / 5,
                z_centre=z,
                z_half_height=rng.uniform(400, 1400) / z_nm,
                semi_major_px=major,
                semi_minor_px=minor,
                orientation_rad=rng.uniform(0, math.pi),
                turn_rad=rng.uniform(-0.05, 0.05),
                cristae_period_px=rng.uniform(70, 110) / xy_nm,
                cristae_phase=rng.uniform(0, 1),
            )
        )
    return drawn


def _er_sheet(
    rng: np.random.Generator,
    cell_label: int,
    x_px: float,
    y_px: float,
    z: float,
    voxel_size_nm: tuple[float, float, float],
    follows: Blob | None,
) -> ErSheet:
    """A sheet 50-60 nm thick (two membranes about 40 nm apart, like the envelope's): a free arc
    centred off the point drawn, or a perinuclear one 80-300 nm outside the nucleus."""
    z_nm, _, xy_nm = voxel_size_nm
    radius = rng.uniform(80, 300) / xy_nm if follows is not None else rng.uniform(300, 1400) / xy_nm
    angle = rng.uniform(0, 2 * math.pi)
    span = rng.uniform(0.3, 0.9) if follows is not None else rng.uniform(0.5, 1.4) * min(1.0, 500 / xy_nm / radius)
    if follows is None:  # the arc passes through the point drawn
        x_px, y_px = x_px - radius * math.cos(angle), y_px - radius * math.sin(angle)
        angle -= span / 2
    return ErSheet(
        cell_label=cell_label,
        x_px=x_px,
        y_px=y_px,
        radius_px=radius,
        start_rad=angle,
        span_rad=span,
        drift_rad=rng.uniform(-0.02, 0.02),
        half_width_px=rng.uniform(25, 30) / xy_nm,
        z_centre=z,
        z_half_height=rng.uniform(150, 650) / z_nm,
        wave=rng.uniform(0, 0.08),
        wave_phase=rng.uniform(0, 2 * math.pi),
        follows=follows,
    )


# --- rasterising -------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _PolarGrid:
    """A blob's polar coordinates over its bounding box (clipped to the slice), computed once."""

    row0: int
    col0: int
    radius_px: Float
    angle_bin: NDArray[np.int16]

    @property
    def window(self) -> tuple[slice, slice]:
        rows, cols = self.radius_px.shape
        return np.s_[self.row0 : self.row0 + rows, self.col0 : self.col0 + cols]


def _polar_grid(blob: Blob, shape_px: tuple[int, int]) -> _PolarGrid:
    height, width = shape_px
    extent = blob.max_extent_px + 2
    r0, r1 = max(0, math.floor(blob.centre_y_px - extent)), min(height, math.ceil(blob.centre_y_px + extent) + 1)
    c0, c1 = max(0, math.floor(blob.centre_x_px - extent)), min(width, math.ceil(blob.centre_x_px + extent) + 1)
    r1, c1 = max(r0, r1), max(c0, c1)
    dy = (np.arange(r0, r1, dtype=np.float32) - np.float32(blob.centre_y_px))[:, None]
    dx = (np.arange(c0, c1, dtype=np.float32) - np.float32(blob.centre_x_px))[None, :]
    return _PolarGrid(r0, c0, np.hypot(dx, dy), _angle_bins(np.arctan2(dy, dx)).astype(np.int16))


def _bin_centres() -> NDArray[np.float64]:
    return np.asarray(-math.pi + (np.arange(ANGLE_BINS) + 0.5) * (2 * math.pi / ANGLE_BINS), dtype=np.float64)


def _angle_bins(angle_rad: NDArray[np.floating]) -> NDArray[np.intp]:
    """The r(θ) table bin of each angle, as :class:`Blob` tables are laid out."""
    bins = np.floor((angle_rad + math.pi) * (ANGLE_BINS / (2 * math.pi))).astype(np.intp) % ANGLE_BINS
    return np.asarray(bins, dtype=np.intp)


def _box(x_px: float, y_px: float, extent_px: float) -> tuple[int, int, Float, Float]:
    """The square of half-side ``extent_px`` round (x, y): its corner and the offsets of its pixels."""
    row0, col0 = math.floor(y_px - extent_px), math.floor(x_px - extent_px)
    size = math.ceil(2 * extent_px) + 2
    dy = (np.arange(row0, row0 + size, dtype=np.float32) - np.float32(y_px))[:, None]
    dx = (np.arange(col0, col0 + size, dtype=np.float32) - np.float32(x_px))[None, :]
    return row0, col0, dy, dx


def _ellipse_distance(along: Float, across: Float, major: float, minor: float) -> Float:
    """Signed distance to an ellipse's outline (positive inside), to first order: f / |∇f| of
    f = 1 - (a/major)² - (c/minor)²; exact on the axes, close enough for membranes elsewhere."""
    f = 1.0 - (along / major) ** 2 - (across / minor) ** 2
    gradient = 2.0 * np.hypot(along / major**2, across / minor**2)
    distance = f / np.maximum(gradient, 1e-3)
    return np.asarray(np.minimum(distance, minor), dtype=np.float32)


def _carve_channels(mask: Mask, channels: tuple[Channel, ...], z: int, row0: int, col0: int) -> None:
    for channel in channels:
        disc = channel.disc(z)
        if disc is None:
            continue
        x, y, radius = disc
        rows = np.arange(mask.shape[0], dtype=np.float32)[:, None] + (row0 - y)
        cols = np.arange(mask.shape[1], dtype=np.float32)[None, :] + (col0 - x)
        mask &= rows**2 + cols**2 > radius**2
