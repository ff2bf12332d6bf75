"""Image formation: one slice's geometry rendered as an SBF-SEM image, as the paper's figures show them.

Backscatter images of osmium-stained, resin-embedded cells are shown inverted, like a TEM micrograph:
membranes and dense chromatin dark, resin light. The specimen's part is a grey level and a texture
per compartment (:class:`Appearance`): cytoplasm with fine granular texture, nucleoplasm a little
lighter with a patchy darker heterochromatin rim just inside the envelope and clumps within, a dense
nucleolus with lighter fibrillar centres; the envelope as two thin dark lines 40 nm apart,
interrupted at nuclear pores; mitochondria (double membrane, darker matrix, cristae), ER sheets (two
membranes as close as the envelope's: the best look-alike), vesicles (small rings) and lipid droplets
(round, uniform, dark rim). Membrane positions are in nanometres and converted with the pixel size.

The microscope's part (:class:`Acquisition`): a little blur, Poisson shot noise at a modest dose,
scan-line offsets and the odd streak, a slow drift of gain and offset through z, a faint tilt of
the background, and now and then a blank or nearly blank slice (a lost cut). Each slice draws its
noise from its own generator, so a slice renders the same whatever block it is rendered in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from etchacell_loop.imaging.synth_cells import ORGANELLE_KINDS, SliceGeometry

Float = NDArray[np.float32]
Image = NDArray[np.uint8]
SliceState = Literal["normal", "blank", "faint"]


@dataclass(frozen=True)
class Appearance:
    """Grey levels (0-255) of each compartment before noise, and where membranes sit (nm from the
    boundary they line; positive is inside)."""

    resin: float = 206.0
    cytoplasm: float = 150.0
    nucleoplasm: float = 163.0
    heterochromatin: float = 98.0
    nucleolus: float = 78.0
    membrane: float = 40.0
    mitochondrial_matrix: float = 112.0
    lipid: float = 92.0
    vesicle_lumen: float = 186.0
    er_lumen: float = 156.0
    inner_nuclear_membrane_nm: float = 22.0
    outer_nuclear_membrane_nm: float = -18.0
    membrane_sigma_nm: float = 6.5
    heterochromatin_rim_nm: tuple[float, float] = (30.0, 160.0)


@dataclass(frozen=True)
class Acquisition:
    """The microscope: blur, dose (counts at white), scan lines, drift through z, lost slices."""

    blur_px: float = 0.7
    counts_at_white: float = 70.0
    scan_line_sd: float = 2.0
    streaks_per_slice: float = 2.0
    streak_sd: float = 12.0
    drift_gain: float = 0.07
    drift_offset: float = 9.0
    tilt: float = 6.0
    blank_probability: float = 0.01


@dataclass(frozen=True)
class SliceConditions:
    """How slice z was acquired: gain and offset of its drift, background tilt, lost or not."""

    gain: float = 1.0
    offset: float = 0.0
    tilt_x: float = 0.0
    tilt_y: float = 0.0
    state: SliceState = "normal"


def acquisition_plan(seed: int, n_slices: int, acquisition: Acquisition | None = None) -> tuple[SliceConditions, ...]:
    """Each slice's conditions: slow sinusoidal drift of gain and offset through the stack, a tilt
    that wanders, and blank or faint slices with ``blank_probability`` (never the first or last)."""
    acquisition = acquisition or Acquisition()
    rng = np.random.default_rng([seed, 2])
    period = n_slices * rng.uniform(0.6, 1.6) + 8
    gain_phase, offset_phase = rng.uniform(0, 2 * math.pi, 2)
    z = np.arange(n_slices, dtype=np.float64)
    gain = 1 + acquisition.drift_gain * np.sin(2 * math.pi * z / period + gain_phase)
    offset = acquisition.drift_offset * np.sin(2 * math.pi * z / (0.7 * period) + offset_phase)
    tilt = np.cumsum(rng.normal(0, 0.25, (n_slices, 2)), axis=0)
    tilt = acquisition.tilt * np.tanh(tilt / 2)
    lost = rng.uniform(size=n_slices) < acquisition.blank_probability
    lost[[0, -1]] = False
    faint = rng.uniform(size=n_slices) < 0.5
    return tuple(
        SliceConditions(
            float(gain[k]),
            float(offset[k]),
            float(tilt[k, 0]),
            float(tilt[k, 1]),
            ("faint" if faint[k] else "blank") if lost[k] else "normal",
        )
        for k in range(n_slices)
    )


def render_slice(
    geometry: SliceGeometry,
    rng: np.random.Generator,
    pixel_size_nm: float,
    textures: TextureBank,
    conditions: SliceConditions | None = None,
    appearance: Appearance | None = None,
    acquisition: Acquisition | None = None,
) -> Image:
    """The slice as an 8-bit inverted BSE image (``rng`` is this slice's own generator)."""
    look = appearance or Appearance()
    scope = acquisition or Acquisition()
    conditions = conditions or SliceConditions()
    shape = geometry.cell.shape
    texture = textures.for_slice(rng, shape)
    image = np.full(shape, look.resin, np.float32)
    flat = image.reshape(-1)
    _cytoplasm(flat, geometry, texture, look)
    _nucleus(flat, geometry, texture, look, pixel_size_nm)
    _envelope(flat, geometry, look, pixel_size_nm)
    _organelles(flat, geometry, texture, look, pixel_size_nm)
    _plasma_membrane(flat, geometry, look, pixel_size_nm)
    return _acquire(image, rng, conditions, scope)


@dataclass(frozen=True, eq=False)
class _SliceTextures:
    """One slice's texture fields, flattened: ``fine``, ``medium`` and ``coarse`` have unit standard
    deviation; ``patches`` varies slowly in 0-1."""

    fine: Float
    medium: Float
    coarse: Float
    patches: Float


@dataclass(frozen=True, eq=False)
class TextureBank:
    """Seamless (periodic) noise tiles drawn once per volume. Each slice takes them in a random
    orientation and offset, which costs a copy where fresh Gaussian-filtered noise would cost four
    filters of the whole slice."""

    fine: Float
    medium: Float
    coarse: Float
    patches: Float

    @classmethod
    def draw(cls, seed: int, tile_px: int = 512) -> TextureBank:
        rng = np.random.default_rng([seed, 4])
        shape = (tile_px, tile_px)
        return cls(
            fine=_smooth(rng.standard_normal(shape, dtype=np.float32), 0.8),
            medium=_smooth(rng.standard_normal(shape, dtype=np.float32), 2.5),
            coarse=_smooth(rng.standard_normal(shape, dtype=np.float32), 5.0),
            patches=_patches(rng.standard_normal(shape, dtype=np.float32), 24.0),
        )

    def for_slice(self, rng: np.random.Generator, shape: tuple[int, ...]) -> _SliceTextures:
        fields = [_tile(field, rng, shape) for field in (self.fine, self.medium, self.coarse, self.patches)]
        return _SliceTextures(*fields)


def _tile(field: Float, rng: np.random.Generator, shape: tuple[int, ...]) -> Float:
    """``field`` turned, flipped and shifted at random, repeated to cover ``shape``, flattened."""
    turned = np.rot90(field, int(rng.integers(4)))
    if rng.integers(2):
        turned = turned[::-1]
    size = field.shape[0]
    rolled = np.roll(turned, (int(rng.integers(size)), int(rng.integers(size))), axis=(0, 1))
    height, width = shape
    reps = (-(-height // size), -(-width // size))
    return np.ascontiguousarray(np.tile(rolled, reps)[:height, :width]).reshape(-1)


def _smooth(white: Float, sigma_px: float) -> Float:
    """Periodic white noise smoothed by a Gaussian, rescaled to unit standard deviation."""
    smoothed = ndimage.gaussian_filter(white, sigma_px, mode="wrap")
    return np.asarray(smoothed / max(float(smoothed.std()), 1e-6), dtype=np.float32)


def _patches(white: Float, sigma_px: float) -> Float:
    """A periodic field varying over about ``sigma_px``, squashed into 0-1."""
    return np.asarray(0.5 + 0.5 * np.tanh(_smooth(white, sigma_px)), dtype=np.float32)


def _blend(image: Float, where: NDArray[np.intp], weight: Float, value: float | Float) -> None:
    """image ← image + weight · (value - image) at the flat indices ``where``."""
    current = image[where]
    image[where] = current + weight * (value - current)


def _line(distance_px: Float, centre_px: float, sigma_px: float) -> Float:
    """A membrane's profile across its boundary: 1 on its centre line, Gaussian either side."""
    profile = np.exp(np.float32(-0.5) * ((distance_px - np.float32(centre_px)) / np.float32(sigma_px)) ** 2)
    return np.asarray(profile, dtype=np.float32)


def _sigmoid(x: Float) -> Float:
    return np.asarray(1 / (1 + np.exp(-np.clip(x, -40, 40))), dtype=np.float32)


def _where(mask: NDArray[np.bool_]) -> NDArray[np.intp]:
    return np.flatnonzero(mask.reshape(-1))


def _cytoplasm(image: Float, geometry: SliceGeometry, texture: _SliceTextures, look: Appearance) -> None:
    cell = _where(geometry.cell > 0)
    image[cell] = look.cytoplasm + 11 * texture.fine[cell] + 5 * texture.coarse[cell]


def _nucleus(image: Float, geometry: SliceGeometry, texture: _SliceTextures, look: Appearance, pixel_nm: float) -> None:
    """Nucleoplasm, the heterochromatin rim and clumps, the nucleolus; condensed chromosomes in a
    mitotic cell."""
    nucleus = _where((geometry.nucleus > 0) & ~geometry.mitotic)
    distance = geometry.nucleus_distance_px.reshape(-1)[nucleus]
    fine, medium, patches = texture.fine[nucleus], texture.medium[nucleus], texture.patches[nucleus]
    image[nucleus] = look.nucleoplasm + 10 * medium + 4 * fine
    low, high = (nm / pixel_nm for nm in look.heterochromatin_rim_nm)
    rim = _sigmoid(((low + (high - low) * patches) - distance) / 1.2) * (0.6 + 0.4 * patches)
    clumps = 0.8 * _sigmoid((texture.coarse[nucleus] - 1.3) / 0.25)
    _blend(image, nucleus, np.maximum(rim, clumps), look.heterochromatin + 8 * fine)
    nucleolus = _where(geometry.nucleolus > 0)
    medium = texture.medium[nucleolus]
    fibrillar_centres = 55 * (medium > 1.9)
    image[nucleolus] = look.nucleolus + 14 * texture.fine[nucleolus] - 25 * np.clip(medium - 1.2, 0, 1)
    image[nucleolus] += fibrillar_centres
    mitotic = _where(geometry.mitotic)
    if mitotic.size:
        fine = texture.fine[mitotic]
        image[mitotic] = look.cytoplasm + 6 + 9 * fine
        chromosomes = _sigmoid((texture.coarse[mitotic] - 0.2) / 0.2)
        _blend(image, mitotic, chromosomes, look.heterochromatin - 10 + 10 * fine)


def _envelope(image: Float, geometry: SliceGeometry, look: Appearance, pixel_nm: float) -> None:
    """Two membranes either side of the boundary, gone where ``envelope_visibility`` says so."""
    inner_px, outer_px = look.inner_nuclear_membrane_nm / pixel_nm, look.outer_nuclear_membrane_nm / pixel_nm
    sigma = look.membrane_sigma_nm / pixel_nm
    signed = geometry.nucleus_distance_px
    near = _where((signed > outer_px - 3 * sigma) & (signed < inner_px + 3 * sigma))
    distance = signed.reshape(-1)[near]
    weight = np.minimum(_line(distance, inner_px, sigma) + _line(distance, outer_px, sigma), 1.0)
    _blend(image, near, weight * geometry.envelope_visibility.reshape(-1)[near] * 0.92, look.membrane)


def _organelles(
    image: Float, geometry: SliceGeometry, texture: _SliceTextures, look: Appearance, pixel_nm: float
) -> None:
    where = _where(geometry.organelle_kind > 0)
    kind = geometry.organelle_kind.reshape(-1)[where]
    distance = geometry.organelle_distance_px.reshape(-1)[where]
    fine = texture.fine[where]
    mito = kind == ORGANELLE_KINDS.index("mitochondrion") + 1
    droplet = kind == ORGANELLE_KINDS.index("lipid_droplet") + 1
    vesicle = kind == ORGANELLE_KINDS.index("vesicle") + 1
    er = kind == ORGANELLE_KINDS.index("er") + 1
    base = np.select(
        [mito, droplet, vesicle],
        [look.mitochondrial_matrix + 8 * fine, look.lipid + 3 * fine, np.full_like(fine, look.vesicle_lumen)],
        look.er_lumen + 5 * fine,
    )
    image[where] = base
    sigma = look.membrane_sigma_nm / pixel_nm
    single = _line(distance, 8 / pixel_nm, sigma)
    membranes = np.select(
        [mito, droplet],
        [
            np.minimum(single + _line(distance, 28 / pixel_nm, sigma), 1.0) + 0.8 * geometry.cristae.reshape(-1)[where],
            _line(distance, 10 / pixel_nm, 1.6 * sigma),
        ],
        single * (vesicle | er),
    )
    _blend(image, where, np.minimum(membranes, 1.0) * 0.9, look.membrane)


def _plasma_membrane(image: Float, geometry: SliceGeometry, look: Appearance, pixel_nm: float) -> None:
    sigma = look.membrane_sigma_nm / pixel_nm
    centre = 8 / pixel_nm
    signed = geometry.cell_distance_px
    near = _where((signed > centre - 3 * sigma) & (signed < centre + 3 * sigma))
    _blend(image, near, 0.85 * _line(signed.reshape(-1)[near], centre, sigma), look.membrane)


def _acquire(image: Float, rng: np.random.Generator, conditions: SliceConditions, scope: Acquisition) -> Image:
    """Blur, drift, tilt, loss, shot noise and scan lines; then 8 bits."""
    height, width = image.shape
    if scope.blur_px > 0:
        image = ndimage.gaussian_filter(image, scope.blur_px, truncate=2.5)
    if conditions.state != "normal":
        mean = float(image.mean())
        image = np.full_like(image, mean) if conditions.state == "blank" else mean + 0.12 * (image - mean)
    rows = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    cols = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    image = image * np.float32(conditions.gain) + np.float32(conditions.offset)
    image += np.float32(conditions.tilt_y) * rows + np.float32(conditions.tilt_x) * cols
    # shot noise: Poisson counts (variance = mean), drawn in their normal approximation, which at
    # tens of counts per pixel is indistinguishable and several times cheaper
    scale = np.float32(255.0 / scope.counts_at_white)
    np.clip(image, 0, None, out=image)
    image += np.sqrt(image * scale) * rng.standard_normal(image.shape, dtype=np.float32)
    image += _scan_lines(rng, height, scope)[:, None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _scan_lines(rng: np.random.Generator, height: int, scope: Acquisition) -> Float:
    """Per-row offsets: small everywhere, large on a few streaks one to three rows deep."""
    offsets = rng.normal(0.0, scope.scan_line_sd, height).astype(np.float32)
    for _ in range(int(rng.poisson(scope.streaks_per_slice))):
        row, depth = int(rng.integers(0, height)), int(rng.integers(1, 4))
        offsets[row : row + depth] += np.float32(rng.normal(0.0, scope.streak_sd))
    return offsets
