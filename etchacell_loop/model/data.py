"""Training data for the U-Net: consensus masks and their source slices, at the model's voxel size.

A :class:`LabelledSlice` says where one consensus mask came from: the level-0 crop of one slice
of a volume that a subject showed, and the mask (0/255 PNG of the nucleus area, at subject
resolution: subject pixel (u, v) is source pixel (x + u·s, y + v·s)). :func:`load_stacks` turns
those records into :class:`Stack` s at the model's isotropic voxel (50 nm in the paper):

- the image crop is area-averaged to the model grid (linear where the model is finer) and
  normalised with :func:`normalise_intensity`, the same function prediction uses;
- the target is the envelope band as the seed code made it: drawn ``envelope_width_nm`` wide at
  the *source* resolution (70 nm = 7 px at 10 nm; the seed's ``030_AGGREGATE`` drew the consensus
  outline at the raw pixel size) around the consensus area (the mask enlarged from subject to source
  pixels by linear interpolation, re-binarised at one half), then area-averaged to the model grid and
  re-binarised at one half (the seed's ``040_DOWNSAMPLE`` rescaled the labels with PIL's bicubic
  filter; an area mean is the same idea without the filter's overshoot). Why not draw the band at
  the model voxel (1.4 → 1 px at 50 nm)? Table 1 is scored at the source resolution
  (:mod:`etchacell_loop.model.evaluation`), and a one-pixel band drawn inside the outline at 50 nm,
  scaled back up, lies 2.5 source pixels inside the 70 nm band: a perfect prediction of it reaches
  F 0.69-0.70 against the truth band at 10 nm, the area-averaged band F 0.86 (the test ROIs of
  ``bench/bench_envelope.py``, whose "50 nm target" row is this ceiling). ``area`` keeps the nucleus
  itself on the model grid;
- consecutive labelled slices of one ROI form a stack. At a source z of 50 nm and 50 nm model
  voxels every slice is a plane; for other z sizes each model plane takes the nearest labelled
  slice (no interpolation across sections: a blend of two cuts is no cut at all).

Training draws random patches from the train split's stacks (:func:`training_batch`), most of them
on the envelope, with augmentation that keeps image and label aligned (:func:`augment_pair`).
Validation uses fixed tiles (:func:`validation_tiles`). Splits are by ROI (:func:`assign_splits`),
so validation and test ROIs are never seen in training.

Arrays at the model boundary are (n, pz, py, px) float32; :func:`to_model_layout` and
:func:`from_model_layout` convert to and from what each architecture's Keras model takes.
No Keras here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage

from etchacell_loop.cria.consensus import envelope_band
from etchacell_loop.imaging.volume import LazyVolume, RoiBox, open_volume, volume_name
from etchacell_loop.model.presets import ModelPreset

FloatArray = NDArray[np.float32]
SPLITS = ("train", "validation", "test")
PredictFn = Callable[[FloatArray], FloatArray]


class TrainingDataError(ValueError):
    """Training data that cannot be used as given; the message is one line naming the problem."""


@dataclass(frozen=True)
class LabelledSlice:
    """One consensus mask and the source crop it lines up with.

    ``crop_xywh`` is the crop in level-0 source pixels; the mask at ``mask_path`` is that crop at
    subject resolution (``scaling_factor`` source pixels per mask pixel). ``split`` is the ROI's:
    ``train``, ``validation``, ``test`` (anything else: not yet assigned).
    """

    volume_path: str
    roi: RoiBox
    z: int
    crop_xywh: tuple[int, int, int, int]
    scaling_factor: float
    mask_path: str
    split: str
    consensus_id: int | None = None

    @property
    def roi_key(self) -> str:
        """The ROI's name within its volume (``hela/cell01``): ROI names repeat across volumes."""
        return f"{volume_name(Path(self.volume_path))}/{self.roi.name}"


@dataclass(frozen=True, eq=False)
class Stack:
    """Consecutive labelled planes of one ROI at the model voxel size: ``image`` normalised float32,
    ``envelope`` uint8 0/1 (the training target), ``area`` bool (the nucleus), all (d, h, w);
    ``source_z`` is the source slice each plane shows."""

    roi_key: str
    split: str
    source_z: tuple[int, ...]
    image: FloatArray
    envelope: NDArray[np.uint8]
    area: NDArray[np.bool_]

    @cached_property
    def envelope_voxels(self) -> NDArray[np.intp]:
        """Flat indices of the envelope voxels (found once: searching the stack for them for every
        patch was most of a batch's cost on a paper-sized stack)."""
        return np.flatnonzero(self.envelope)


@dataclass(frozen=True)
class AugmentParams:
    """Augmentation of a training patch. Geometric changes act on image and label alike and only
    in y and x (the cutting plane; z is the sectioning axis and keeps its meaning). Zoom is off by
    default: it changes the apparent voxel size and thins the 1-2 px band at 50 nm; when on, the
    label is re-binarised after interpolation. Intensity changes act on the image only."""

    flips: bool = True
    rotations: bool = True
    zoom_range: tuple[float, float] | None = None
    gain_range: tuple[float, float] = (0.9, 1.1)
    offset_range: tuple[float, float] = (-0.05, 0.05)
    gamma_range: tuple[float, float] = (0.8, 1.25)
    intensity: bool = True


# --- intensities and resampling ------------------------------------------------------------------


def normalise_intensity(array: NDArray[Any], low_percentile: float = 1.0, high_percentile: float = 99.0) -> FloatArray:
    """Source intensities → float32 in [0, 1] by the array's own percentile window.

    Per stack (or per predicted region), not per volume: SBF-SEM brightness drifts through a block
    and between acquisitions, and the model should see the same contrast wherever it is applied.
    Training and prediction both call this, so they agree by construction. A flat array maps to 0.
    """
    values = np.asarray(array, dtype=np.float32)
    if values.size == 0:
        return values
    low, high = np.percentile(values, [low_percentile, high_percentile])
    span = float(high - low)
    if span <= 0:
        return np.zeros_like(values)
    scaled = (values - np.float32(low)) / np.float32(span)
    clipped: FloatArray = np.clip(scaled, 0.0, 1.0).astype(np.float32)
    return clipped


def model_shape_yx(
    crop_hw_px: tuple[int, int], source_pixel_nm_yx: tuple[float, float], voxel_size_nm: float
) -> tuple[int, int]:
    """The size (rows, columns) a crop of ``crop_hw_px`` source pixels has on the model grid."""
    return (
        max(1, round(crop_hw_px[0] * source_pixel_nm_yx[0] / voxel_size_nm)),
        max(1, round(crop_hw_px[1] * source_pixel_nm_yx[1] / voxel_size_nm)),
    )


def resample_image(image: NDArray[Any], shape_hw: tuple[int, int]) -> FloatArray:
    """A 2-D image resized to ``shape_hw``: area averaging when shrinking (every source pixel
    counts, as an SEM pixel integrates its area), linear interpolation when enlarging."""
    source = np.ascontiguousarray(image, dtype=np.float32)
    if source.shape == shape_hw:
        return source
    shrinking = shape_hw[0] <= source.shape[0] and shape_hw[1] <= source.shape[1]
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    resized = Image.fromarray(source).resize((shape_hw[1], shape_hw[0]), method)
    return np.asarray(resized, dtype=np.float32)


def resample_area(area: NDArray[Any], shape_hw: tuple[int, int]) -> NDArray[np.bool_]:
    """A binary area resized to ``shape_hw`` and re-binarised: a model pixel is inside when at
    least half of it was (its area fraction, or the interpolated value when enlarging, ≥ 0.5)."""
    fraction = resample_image(np.asarray(area, dtype=bool).astype(np.float32), shape_hw)
    return np.asarray(fraction >= 0.5)


def read_mask(path: Path) -> NDArray[np.bool_]:
    """A consensus mask PNG (0 = outside, 255 = nucleus) as a bool array; a clear error otherwise."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"))
    except (OSError, ValueError) as exc:
        raise TrainingDataError(f"{path}: not a readable mask image ({exc})") from None
    return np.asarray(pixels > 127)


def envelope_target(
    mask: NDArray[np.bool_], crop_hw_px: tuple[int, int], width_source_px: float, shape_hw: tuple[int, int]
) -> NDArray[np.bool_]:
    """The training target of one slice (see the module docstring): the consensus ``mask`` (subject
    resolution) enlarged to the crop's ``crop_hw_px`` source pixels, outlined ``width_source_px``
    wide there, and area-averaged to ``shape_hw`` on the model grid, kept at one half."""
    band = envelope_band(resample_area(mask, crop_hw_px), width_source_px)
    return band_on_grid(band, shape_hw)


def band_on_grid(band: NDArray[np.bool_], shape_hw: tuple[int, int]) -> NDArray[np.bool_]:
    """A band at source pixels on the model grid: area means kept at one half."""
    if not band.any():
        return np.zeros(shape_hw, dtype=bool)
    return np.asarray(resample_image(band.astype(np.float32), shape_hw) >= 0.5)


def envelope_of(area: NDArray[np.bool_], width_px: float) -> NDArray[np.uint8]:
    """The envelope band of each plane of an area stack (d, h, w), ``width_px`` model pixels wide."""
    bands = [envelope_band(np.asarray(plane, dtype=bool), width_px) for plane in area]
    return np.stack(bands).astype(np.uint8) if bands else np.zeros(area.shape, np.uint8)


# --- stacks --------------------------------------------------------------------------------------


def group_runs(slices: Iterable[LabelledSlice]) -> list[list[LabelledSlice]]:
    """Labelled slices grouped into runs of consecutive z of one ROI shown through one crop; a
    slice labelled twice keeps its first record. Runs come out in a stable order."""
    groups: dict[tuple[Any, ...], dict[int, LabelledSlice]] = {}
    for record in slices:
        key = (record.volume_path, record.roi.name, record.crop_xywh, record.scaling_factor, record.split)
        groups.setdefault(key, {}).setdefault(record.z, record)
    runs: list[list[LabelledSlice]] = []
    for key in sorted(groups, key=repr):
        by_z = groups[key]
        run: list[LabelledSlice] = []
        for z in sorted(by_z):
            if run and z != run[-1].z + 1:
                runs.append(run)
                run = []
            run.append(by_z[z])
        runs.append(run)
    return runs


def model_planes(first_z: int, last_z: int, z_size_nm: float, voxel_size_nm: float) -> list[int]:
    """The source slice each model plane of ``[first_z, last_z]`` takes: planes every
    ``voxel_size_nm`` from the first slice, each the nearest source slice (every slice when the
    two sizes agree)."""
    step = voxel_size_nm / z_size_nm
    count = math.floor((last_z - first_z) / step + 1e-9) + 1
    return [min(last_z, first_z + round(k * step)) for k in range(count)]


def load_stacks(slices: Sequence[LabelledSlice], preset: ModelPreset) -> list[Stack]:
    """Every run of labelled slices read and resampled to the preset's voxel size (see the module
    docstring). Volumes are opened lazily, once each, and only the crops are read."""
    volumes: dict[str, LazyVolume] = {}
    try:
        return [_load_run(run, preset, volumes) for run in group_runs(slices)]
    finally:
        for volume in volumes.values():
            volume.close()


def _load_run(run: Sequence[LabelledSlice], preset: ModelPreset, volumes: dict[str, LazyVolume]) -> Stack:
    first = run[0]
    if first.volume_path not in volumes:
        try:
            volumes[first.volume_path] = open_volume(Path(first.volume_path))
        except ValueError as exc:
            raise TrainingDataError(str(exc)) from None
    volume = volumes[first.volume_path]
    x, y, w, h = first.crop_xywh
    if w < 1 or h < 1 or x < 0 or y < 0 or y + h > volume.shape_zyx[1] or x + w > volume.shape_zyx[2]:
        raise TrainingDataError(f"{first.roi_key}: crop {first.crop_xywh} lies outside the volume")
    shape = model_shape_yx((h, w), (volume.voxel_size_nm[1], volume.voxel_size_nm[2]), preset.voxel_size_nm)
    by_z = {record.z: record for record in run}
    planes = model_planes(run[0].z, run[-1].z, volume.voxel_size_nm[0], preset.voxel_size_nm)
    width_source_px = preset.envelope_width_nm / volume.voxel_size_nm[1]
    images, areas, envelopes = [], [], []
    for z in planes:
        mask = _checked_mask(by_z[z])
        images.append(resample_image(volume.read(z, slice(y, y + h), slice(x, x + w)), shape))
        areas.append(resample_area(mask, shape))
        envelopes.append(envelope_target(mask, (h, w), width_source_px, shape))
    return Stack(
        roi_key=first.roi_key,
        split=first.split,
        source_z=tuple(planes),
        image=normalise_intensity(np.stack(images)),
        envelope=np.stack(envelopes).astype(np.uint8),
        area=np.stack(areas),
    )


def _checked_mask(record: LabelledSlice) -> NDArray[np.bool_]:
    """The record's mask, checked to be the size its crop has at subject resolution (±1 px for rounding)."""
    mask = read_mask(Path(record.mask_path))
    _, _, w, h = record.crop_xywh
    expected = (h / record.scaling_factor, w / record.scaling_factor)
    if abs(mask.shape[0] - expected[0]) > 1 or abs(mask.shape[1] - expected[1]) > 1:
        raise TrainingDataError(
            f"{record.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} px, but crop {record.crop_xywh} at "
            f"scaling factor {record.scaling_factor:g} is {expected[1]:.0f}x{expected[0]:.0f}"
        )
    return mask


# --- splits --------------------------------------------------------------------------------------


def assign_splits(
    roi_names: Iterable[str], fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0
) -> dict[str, str]:
    """A split for every ROI, deterministic for ``seed`` and independent of the names' order.

    Roughly ``fractions`` (train, validation, test) of the ROIs each; with two or more ROIs at least
    one goes to train and one to validation (a model needs both), and test gets what is left once
    those are served. A single ROI trains.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise TrainingDataError(f"split fractions {fractions} are not three non-negative numbers")
    names = sorted(set(roi_names))
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    n = len(order)
    total = sum(fractions)
    n_val = round(n * fractions[1] / total)
    n_test = round(n * fractions[2] / total)
    if n >= 2:
        n_val = max(1, n_val)
        n_test = min(n_test, n - 1 - n_val)
    else:
        n_val = n_test = 0
    n_train = n - n_val - n_test
    labels = ["train"] * n_train + ["validation"] * n_val + ["test"] * n_test
    return dict(zip(order, labels, strict=True))


def with_splits(slices: Sequence[LabelledSlice], seed: int = 0) -> list[LabelledSlice]:
    """The records, those without a known split given one by ROI with :func:`assign_splits` (ROIs
    that already have a split keep it and are not counted)."""
    unassigned = sorted({r.roi_key for r in slices if r.split not in SPLITS})
    chosen = assign_splits(unassigned, seed=seed) if unassigned else {}
    return [r if r.split in SPLITS else _with_split(r, chosen[r.roi_key]) for r in slices]


def _with_split(record: LabelledSlice, split: str) -> LabelledSlice:
    return LabelledSlice(
        record.volume_path, record.roi, record.z, record.crop_xywh, record.scaling_factor,
        record.mask_path, split, record.consensus_id,
    )  # fmt: skip


# --- patches -------------------------------------------------------------------------------------


def pad_to_patch(array: NDArray[Any], patch_zyx: tuple[int, int, int]) -> NDArray[Any]:
    """``array`` (d, h, w) padded by reflection at the far end of every axis shorter than the patch
    (a stack shallower than the patch, a crop narrower than it)."""
    pads = [(0, max(0, p - n)) for n, p in zip(array.shape, patch_zyx, strict=True)]
    return array if not any(after for _, after in pads) else np.pad(array, pads, mode="reflect")


def sample_patch(
    stack: Stack, patch_zyx: tuple[int, int, int], rng: np.random.Generator, *, on_envelope: bool
) -> tuple[FloatArray, NDArray[np.uint8]]:
    """One random patch (image, envelope) of ``stack``; ``on_envelope`` places it so that a random
    envelope voxel lies inside it (when the stack has any)."""
    image, label = pad_to_patch(stack.image, patch_zyx), pad_to_patch(stack.envelope, patch_zyx)
    starts = [int(rng.integers(0, n - p + 1)) for n, p in zip(image.shape, patch_zyx, strict=True)]
    if on_envelope:
        voxels = stack.envelope_voxels if label is stack.envelope else np.flatnonzero(label)
        if voxels.size:
            centre = np.unravel_index(int(voxels[rng.integers(0, voxels.size)]), label.shape)
            starts = [
                int(np.clip(c - rng.integers(0, p), 0, n - p))
                for c, p, n in zip(centre, patch_zyx, image.shape, strict=True)
            ]
    box = tuple(slice(s, s + p) for s, p in zip(starts, patch_zyx, strict=True))
    return image[box], label[box]


def augment_pair(
    image: FloatArray, label: NDArray[Any], rng: np.random.Generator, params: AugmentParams
) -> tuple[FloatArray, NDArray[Any]]:
    """One random augmentation of a (pz, py, px) patch and its label: the same flips, 90° rotations
    and zoom in y and x for both (so they stay aligned voxel for voxel), intensity gain, offset and
    gamma for the image only. The label keeps its dtype and stays binary."""
    dtype = label.dtype
    if params.rotations:
        k = int(rng.integers(0, 4))
        image, label = np.rot90(image, k, axes=(1, 2)), np.rot90(label, k, axes=(1, 2))
    if params.flips:
        for axis in (1, 2):
            if rng.random() < 0.5:
                image, label = np.flip(image, axis), np.flip(label, axis)
    if params.zoom_range is not None:
        factor = float(rng.uniform(*params.zoom_range))
        image, label = zoom_yx(image, factor), zoom_yx(label.astype(np.float32), factor) >= 0.5
    if params.intensity:
        gain, offset = rng.uniform(*params.gain_range), rng.uniform(*params.offset_range)
        gamma = rng.uniform(*params.gamma_range)
        image = np.clip(image, 0.0, 1.0) ** np.float32(gamma) * np.float32(gain) + np.float32(offset)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label).astype(dtype)


def zoom_yx(patch: NDArray[Any], factor: float) -> FloatArray:
    """A (pz, py, px) patch magnified by ``factor`` in y and x only (linear), cut or reflect-padded
    back to its size about its centre."""
    zoomed = ndimage.zoom(np.asarray(patch, dtype=np.float32), (1.0, factor, factor), order=1)
    out: FloatArray = _centre_fit(zoomed, patch.shape)
    return out


def _centre_fit(array: NDArray[Any], shape: tuple[int, ...]) -> NDArray[Any]:
    for axis, wanted in enumerate(shape):
        size = array.shape[axis]
        if size > wanted:
            start = (size - wanted) // 2
            array = np.take(array, range(start, start + wanted), axis=axis)
        elif size < wanted:
            before = (wanted - size) // 2
            pads = [(0, 0)] * array.ndim
            pads[axis] = (before, wanted - size - before)
            array = np.pad(array, pads, mode="reflect")
    return array


def training_batch(
    stacks: Sequence[Stack],
    preset: ModelPreset,
    rng: np.random.Generator,
    params: AugmentParams | None = None,
) -> tuple[FloatArray, FloatArray]:
    """One batch (images, labels), each (batch_size, pz, py, px) float32: patches of stacks chosen
    in proportion to their size, ``envelope_patch_fraction`` of them on the envelope, augmented."""
    if not stacks:
        raise TrainingDataError("no training stacks to draw patches from")
    weights = np.array([s.image.size for s in stacks], dtype=np.float64)
    choices = rng.choice(len(stacks), size=preset.batch_size, p=weights / weights.sum())
    images, labels = [], []
    for index in choices:
        on_envelope = bool(rng.random() < preset.envelope_patch_fraction)
        image, label = sample_patch(stacks[int(index)], preset.patch_zyx, rng, on_envelope=on_envelope)
        if params is not None:
            image, label = augment_pair(image, label, rng, params)
        images.append(image)
        labels.append(label.astype(np.float32))
    return np.stack(images), np.stack(labels)


def tile_starts(size: int, patch: int) -> list[int]:
    """Starts of patches covering ``[0, size)`` edge to edge (the last flush with the end; a size
    below the patch gives one start, the array being padded)."""
    if size <= patch:
        return [0]
    starts = list(range(0, size - patch + 1, patch))
    return starts if starts[-1] == size - patch else [*starts, size - patch]


def _tiles(shape: tuple[int, ...], patch_zyx: tuple[int, int, int]) -> list[tuple[slice, ...]]:
    grids = [tile_starts(n, p) for n, p in zip(shape, patch_zyx, strict=True)]
    return [
        (slice(z, z + patch_zyx[0]), slice(y, y + patch_zyx[1]), slice(x, x + patch_zyx[2]))
        for z in grids[0]
        for y in grids[1]
        for x in grids[2]
    ]


def validation_tiles(
    stacks: Sequence[Stack], patch_zyx: tuple[int, int, int], limit: int, seed: int = 0
) -> tuple[FloatArray, FloatArray]:
    """Fixed (images, labels) tiles covering the stacks, at most ``limit`` of them (a seeded choice
    when there are more), so every epoch's validation loss is measured on the same voxels."""
    images, labels = [], []
    for stack in stacks:
        image, label = pad_to_patch(stack.image, patch_zyx), pad_to_patch(stack.envelope, patch_zyx)
        for box in _tiles(image.shape, patch_zyx):
            images.append(image[box])
            labels.append(label[box].astype(np.float32))
    if not images:
        raise TrainingDataError("no validation stacks to tile")
    if len(images) > limit:
        keep = sorted(np.random.default_rng(seed).choice(len(images), size=limit, replace=False).tolist())
        images, labels = [images[i] for i in keep], [labels[i] for i in keep]
    return np.stack(images), np.stack(labels)


# --- model layout --------------------------------------------------------------------------------


def to_model_layout(batch: NDArray[Any], architecture: str) -> FloatArray:
    """(n, pz, py, px) → what the Keras model takes: (n, py, px, pz) for the 2.5-D U-Net (slices
    as channels), (n, pz, py, px, 1) for the 3-D one."""
    values = np.asarray(batch, dtype=np.float32)
    if values.ndim != 4:
        raise TrainingDataError(f"expected a (n, pz, py, px) batch, got shape {values.shape}")
    if architecture == "unet-2.5d":
        return np.ascontiguousarray(values.transpose(0, 2, 3, 1))
    return values[..., np.newaxis]


def from_model_layout(output: NDArray[Any], architecture: str) -> FloatArray:
    """The Keras model's output back to (n, pz, py, px) float32 (inverse of :func:`to_model_layout`)."""
    values = np.asarray(output, dtype=np.float32)
    if architecture == "unet-2.5d":
        return np.ascontiguousarray(values.transpose(0, 3, 1, 2))
    return values[..., 0]


def split_stacks(stacks: Sequence[Stack]) -> Mapping[str, list[Stack]]:
    """The stacks by split (train, validation, test; each present, maybe empty)."""
    by_split: dict[str, list[Stack]] = {name: [] for name in SPLITS}
    for stack in stacks:
        by_split.setdefault(stack.split, []).append(stack)
    return by_split
