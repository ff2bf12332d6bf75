"""A predicted envelope against a reference, as the paper's Table 1 scores it: at the source resolution.

The paper's figures (§2.5, Table 1; §4.10) were computed on the 10 nm source grid: its AHD of
1.638 px is 16.377 nm. The seed code predicted at 50 nm, removed small components, scaled the
prediction back up to the source size with bicubic interpolation and re-binarised it at one half
(``pipeline_predict/RESCALE.py``: PIL ``BICUBIC``, then ``to_binary`` at 128 of 255), and compared it
with the consensus drawn at the source resolution, 70 nm (7 px) wide. This module does the same:

* **The prediction on the source grid** (:class:`PredictionOnSource`): model voxel ``j`` covers the
  source pixels ``[j·f, (j+1)·f)`` from the predicted region's corner (as prediction averaged them);
  each model-grid slice of the post-processed envelope is enlarged ``f`` times with bicubic
  interpolation (PIL, as the seed) and kept where it reaches one half, then cut to the region. Along
  z a source slice takes the model plane that covers it (no interpolation across sections).
* **The reference at the source grid**, over the predicted region and only on slices that have one:
  a synthetic volume's truth (``labels/envelope``, already the 70 nm band; restricted to the ROI's
  own nucleus when the ROI names it, since ``keep_largest`` keeps only that one), or the consensus
  (:func:`consensus_band_slices`: each slice's consensus area, enlarged from subject to source pixels
  by linear interpolation and re-binarised at one half, outlined ``envelope_width_nm`` wide with
  :func:`etchacell_loop.cria.consensus.envelope_band`, the band the consensus itself draws).
* Figures are summed slice by slice (:class:`~etchacell_loop.model.metrics.Table1Accumulator`), so a
  paper-sized ROI (2000 x 2000 x 150 source pixels) is never held whole.

The figures on the model grid (50 nm) are kept as a secondary, labelled column: a band one or two
voxels wide scored at 50 nm is a harsher metric than the paper's. There the reference's band at the
source resolution is brought onto the prediction's grid the way training targets are made
(:func:`band_on_grid`, :func:`etchacell_loop.model.data.envelope_target`): area means kept at one half.

``etchacell evaluate`` reads both sides from files: an OME-Zarr's label image (``labels/envelope`` by
default) or, when it has no such label, the image itself; TIFF stacks are read as images; non-zero is
envelope. Two volumes of one shape are compared as they are. A prediction made by ``etchacell
predict`` records where it lies in its source (``offset_zyx_px``, ``factor_zyx``); against a
reference on the source's grid it is scored at the source resolution and, secondarily, on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from PIL import Image
from scipy import ndimage

from etchacell_loop.cria.consensus import envelope_band
from etchacell_loop.imaging.volume import LazyVolume, RoiBox, VolumeError, open_label, open_volume
from etchacell_loop.model.data import LabelledSlice, read_mask, resample_area
from etchacell_loop.model.metrics import (
    Binary,
    Table1,
    Table1Accumulator,
    area_f_measure,
    as_binary,
    evaluate_volumes,
)
from etchacell_loop.model.predict import block_mean

DEFAULT_LABEL = "envelope"
NUCLEUS_LABEL = "nucleus"
DEFAULT_ENVELOPE_WIDTH_NM = 70.0
UNKNOWN_VOXEL_NM = (1.0, 1.0, 1.0)  # placeholder for files that say nothing; never reported
UPSCALE_THRESHOLD = 0.5  # the seed's to_binary: 128 of 255

ReferenceSlices = Iterable[tuple[int, Binary]]  # (source z, the reference band over the region)


class EvaluationError(ValueError):
    """Two volumes that cannot be compared; the message is one line."""


@dataclass(frozen=True)
class Evaluation:
    """Table 1 of one prediction: at the source resolution (the paper's terms; ``None`` when the
    two sides share one grid) and on the prediction's own grid (secondary)."""

    source: Table1 | None
    model_grid: Table1

    @property
    def primary(self) -> Table1:
        """The figures to report first: the source resolution's where there are any."""
        return self.source or self.model_grid


# --- where a prediction lies ------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where a prediction lies in its source: the region's corner and size in level-0 source voxels,
    source voxels per model voxel, and both voxel sizes (nm)."""

    offset_zyx: tuple[int, int, int]
    factor_zyx: tuple[int, int, int]
    region_zyx: tuple[int, int, int]
    source_voxel_nm: tuple[float, float, float]
    model_voxel_nm: tuple[float, float, float]

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], model_shape_zyx: Sequence[int]) -> Placement:
        """From the ``etchacell`` attribute :mod:`etchacell_loop.model.predict` writes; a region
        without a recorded size is the model grid times the factor."""
        try:
            offset = _three(int(v) for v in attrs["offset_zyx_px"])
            factor = _three(int(v) for v in attrs["factor_zyx"])
            model_voxel = _three(float(v) for v in attrs["voxel_size_nm"])
            roi = attrs.get("roi") or {}
            region = (
                _three(int(roi[k]) for k in ("depth", "height", "width"))
                if all(k in roi for k in ("depth", "height", "width"))
                else _three(n * f for n, f in zip(model_shape_zyx, factor, strict=True))
            )
            source = attrs.get("source_voxel_size_nm")
            source_voxel = (
                _three(float(v) for v in source)
                if source
                else _three(m / f for m, f in zip(model_voxel, factor, strict=True))
            )
        except (KeyError, TypeError, ValueError, IndexError):
            raise EvaluationError("the prediction's placement attributes are unreadable") from None
        return cls(offset, factor, region, source_voxel, model_voxel)

    @property
    def region(self) -> RoiBox:
        z, y, x = self.offset_zyx
        depth, height, width = self.region_zyx
        return RoiBox("region", x, y, z, width, height, depth)


def _three(values: Iterable[Any]) -> Any:
    items = tuple(values)
    if len(items) != 3:
        raise ValueError("expected three values")
    return items


def prediction_placement(path: Path) -> Mapping[str, Any] | None:
    """The ``etchacell`` attribute of a prediction written by ``etchacell predict``, else ``None``."""
    try:
        extras = dict(zarr.open_group(str(path), mode="r").attrs).get("etchacell")
    except (OSError, ValueError, KeyError, zarr.errors.GroupNotFoundError):
        return None
    if isinstance(extras, Mapping) and extras.get("kind") == "prediction":
        return extras
    return None


# --- the prediction on the source grid --------------------------------------------------------------


def upscale_to_source(model_slice: Binary, factor_yx: tuple[int, int], shape_yx: tuple[int, int]) -> Binary:
    """A model-grid slice on the source grid (see the module docstring): bicubic enlargement by the
    factor, kept at one half, cut to ``shape_yx``. A factor of 1 returns the slice as it is."""
    fy, fx = factor_yx
    values = np.asarray(model_slice, dtype=bool)
    if (fy, fx) != (1, 1) and values.any():
        rows, cols = values.shape
        enlarged = Image.fromarray(values.astype(np.float32)).resize((cols * fx, rows * fy), Image.Resampling.BICUBIC)
        values = np.asarray(enlarged) >= UPSCALE_THRESHOLD
    elif (fy, fx) != (1, 1):
        values = np.zeros((values.shape[0] * fy, values.shape[1] * fx), dtype=bool)
    out = np.zeros(shape_yx, dtype=bool)
    h, w = min(shape_yx[0], values.shape[0]), min(shape_yx[1], values.shape[1])
    out[:h, :w] = values[:h, :w]
    return out


class PredictionOnSource:
    """A prediction's envelope read slice by slice on the source grid over its region."""

    def __init__(self, label: LazyVolume, placement: Placement) -> None:
        self.label = label
        self.placement = placement

    @classmethod
    def open(cls, path: Path, label: str = DEFAULT_LABEL) -> PredictionOnSource:
        attrs = prediction_placement(path)
        if attrs is None:
            raise EvaluationError(f"{path} is not a prediction written by etchacell predict")
        volume = open_label(path, label)
        return cls(volume, Placement.from_attrs(attrs, volume.shape_zyx))

    def close(self) -> None:
        self.label.close()

    @property
    def pixel_size_nm(self) -> float:
        return float(self.placement.source_voxel_nm[1])

    def slice(self, z: int) -> Binary:
        """Source slice ``z`` (absolute) of the region; empty outside the predicted planes."""
        place = self.placement
        shape_yx = (place.region_zyx[1], place.region_zyx[2])
        k = (z - place.offset_zyx[0]) // place.factor_zyx[0]
        if not 0 <= k < self.label.shape_zyx[0]:
            return np.zeros(shape_yx, dtype=bool)
        plane = as_binary(self.label.read(k, slice(None), slice(None)))
        return upscale_to_source(plane, (place.factor_zyx[1], place.factor_zyx[2]), shape_yx)


def score_slices(
    prediction: Callable[[int], Binary], reference: ReferenceSlices, pixel_size_nm: float
) -> Table1Accumulator:
    """Table 1 summed over the slices ``reference`` yields, each against the prediction's slice."""
    accumulator = Table1Accumulator(pixel_size_nm)
    for z, band in reference:
        accumulator.add(z, prediction(z), band)
    return accumulator


# --- references on the source grid ------------------------------------------------------------------


def truth_band_slices(
    volume_path: Path,
    region: RoiBox,
    *,
    nucleus_label: int | None = None,
    label: str = DEFAULT_LABEL,
    slices: Iterable[int] | None = None,
) -> Iterator[tuple[int, Binary]]:
    """Every source slice of ``region`` (or only ``slices`` of it) in the truth's envelope label;
    with ``nucleus_label``, only the band of that nucleus (the truth labels every nucleus, an ROI's
    consensus traces its own)."""
    band_volume = open_label(volume_path, label)
    nuclei = _open_nuclei(volume_path) if nucleus_label is not None else None
    ys, xs = slice(region.y, region.y + region.height), slice(region.x, region.x + region.width)
    wanted = range(region.z, region.z + region.depth)
    try:
        for z in wanted if slices is None else [k for k in slices if k in wanted]:
            band = as_binary(band_volume.read(z, ys, xs))
            if nuclei is not None and band.any():
                band &= _near(np.asarray(nuclei.read(z, ys, xs)) == nucleus_label)
            yield z, band
    finally:
        band_volume.close()
        if nuclei is not None:
            nuclei.close()


def _open_nuclei(volume_path: Path) -> LazyVolume | None:
    try:
        return open_label(volume_path, NUCLEUS_LABEL)
    except VolumeError:
        return None


NEAR_PX = 4  # the truth's band reaches ⌊7/2⌋ = 3 px outside its nucleus at 10 nm; one more for rounding


def _near(area: Binary, radius_px: int = NEAR_PX) -> Binary:
    """``area`` grown by ``radius_px`` (a square: cheap, and only used to pick one nucleus' band)."""
    if not area.any():
        return area
    return np.asarray(ndimage.maximum_filter(area, size=2 * radius_px + 1), dtype=bool)


def consensus_source_area(record: LabelledSlice) -> Binary:
    """A consensus mask at the source resolution of its crop: subject pixel (u, v) covers source
    pixels (x + u·s, y + v·s); enlarged by linear interpolation, re-binarised at one half."""
    mask = read_mask(Path(record.mask_path))
    _, _, width, height = record.crop_xywh
    return resample_area(mask, (height, width))


def consensus_band_slices(
    records: Sequence[LabelledSlice], region: RoiBox, *, envelope_width_nm: float, source_pixel_nm: float
) -> Iterator[tuple[int, Binary]]:
    """The consensus band of each labelled slice inside ``region``, over the region, at source
    pixels: the band is drawn on the whole crop first (a nucleus cut by the region's edge gets no
    band along the cut), then cut to the region."""
    width_px = envelope_width_nm / source_pixel_nm
    for record in sorted(records, key=lambda r: r.z):
        if not region.z <= record.z < region.z + region.depth:
            continue
        band = envelope_band(consensus_source_area(record), width_px)
        yield record.z, _cut(band, record.crop_xywh, region)


def consensus_area_slices(records: Sequence[LabelledSlice], region: RoiBox) -> Iterator[tuple[int, Binary]]:
    """Each labelled slice's consensus area inside ``region``, over the region, at source pixels."""
    for record in sorted(records, key=lambda r: r.z):
        if region.z <= record.z < region.z + region.depth:
            yield record.z, _cut(consensus_source_area(record), record.crop_xywh, region)


def _cut(image: Binary, crop_xywh: tuple[int, int, int, int], region: RoiBox) -> Binary:
    """``image`` (covering the crop) over ``region``: the overlap copied, the rest empty."""
    x, y, _, _ = crop_xywh
    out = np.zeros((region.height, region.width), dtype=bool)
    y0, x0 = max(region.y, y), max(region.x, x)
    y1, x1 = min(region.y + region.height, y + image.shape[0]), min(region.x + region.width, x + image.shape[1])
    if y1 > y0 and x1 > x0:
        out[y0 - region.y : y1 - region.y, x0 - region.x : x1 - region.x] = image[y0 - y : y1 - y, x0 - x : x1 - x]
    return out


# --- references on the model grid (the secondary column) ------------------------------------------


def band_on_grid(band: Binary, factor_yx: tuple[int, int], shape_yx: tuple[int, int]) -> Binary:
    """A band at source pixels on the model grid, as training targets are made
    (:func:`etchacell_loop.model.data.envelope_target`): block means kept at one half."""
    out = np.zeros(shape_yx, dtype=bool)
    if not band.any():
        return out
    coarse = block_mean(band[np.newaxis].astype(np.float32), (1, factor_yx[0], factor_yx[1]))[0] >= 0.5
    h, w = min(shape_yx[0], coarse.shape[0]), min(shape_yx[1], coarse.shape[1])
    out[:h, :w] = coarse[:h, :w]
    return out


def bands_on_grid(bands: ReferenceSlices, placement: Placement, shape_zyx: Sequence[int]) -> Binary:
    """Source-resolution bands (per source z, over the region) on the model grid: each band goes to
    the model plane whose first source slice it is; a plane without a band stays empty."""
    out = np.zeros(tuple(shape_zyx), dtype=bool)
    factor_yx = (placement.factor_zyx[1], placement.factor_zyx[2])
    for z, band in bands:
        offset = z - placement.offset_zyx[0]
        if offset % placement.factor_zyx[0] or not 0 <= offset // placement.factor_zyx[0] < shape_zyx[0]:
            continue
        out[offset // placement.factor_zyx[0]] = band_on_grid(band, factor_yx, (int(shape_zyx[1]), int(shape_zyx[2])))
    return out


def reference_on_grid(reference: BinarySource, placement: Mapping[str, Any], shape_zyx: tuple[int, ...]) -> Binary:
    """The reference's envelope (a band at the source resolution) over a prediction's region, on the
    prediction's grid, as training targets are made (see the module docstring)."""
    place = Placement.from_attrs(placement, shape_zyx)
    offset, factor = place.offset_zyx, place.factor_zyx
    hi = [min(offset[d] + shape_zyx[d] * factor[d], reference.volume.shape_zyx[d]) for d in range(3)]
    if any(hi[d] <= offset[d] for d in range(3)):
        raise EvaluationError("the prediction's region lies outside the reference volume")

    def bands() -> Iterator[tuple[int, Binary]]:
        for z in range(offset[0], hi[0], factor[0]):
            yield z, as_binary(reference.volume.read(z, slice(offset[1], hi[1]), slice(offset[2], hi[2])))

    return bands_on_grid(bands(), place, shape_zyx)


# --- from files: what `etchacell evaluate` computes ---------------------------------------------------


@dataclass(frozen=True)
class BinarySource:
    """One side of a comparison, still lazy: the volume, whether its voxel size is known, and the
    placement a prediction records (``None`` for anything else)."""

    volume: LazyVolume
    voxel_known: bool
    placement: Mapping[str, Any] | None

    def read(self) -> Binary:
        z, y, x = self.volume.shape_zyx
        return as_binary(np.stack([self.volume.read(k, slice(0, y), slice(0, x)) for k in range(z)]))


def open_binary(path: Path, label: str = DEFAULT_LABEL) -> BinarySource:
    """``path``'s label image ``label`` when it has one, else the image itself."""
    volume = open_volume(path, fallback_voxel_size_nm=UNKNOWN_VOXEL_NM)
    if label in volume.labels:
        volume.close()
        volume = open_label(path, label)
    placement = prediction_placement(path) if volume.format == "ome-zarr" else None
    return BinarySource(volume, volume.voxel_size_source != "default", placement)


def evaluate_paths(
    pred_path: Path,
    ref_path: Path,
    *,
    label: str = DEFAULT_LABEL,
    pixel_size_nm: float | None = None,
    central_slice: int | None = None,
) -> Evaluation:
    """Table 1 for the prediction at ``pred_path`` against the reference at ``ref_path``: at the
    source resolution when the prediction records its placement and the reference is on the source
    grid, and on the prediction's grid (the only figures when both share one grid).

    ``pixel_size_nm`` is the prediction grid's pixel size when its file does not say it;
    ``central_slice`` (a plane of the prediction) picks the area F-measure's slice in both."""
    pred, ref = open_binary(pred_path, label), open_binary(ref_path, label)
    try:
        pred_array = pred.read()
        if pred.volume.shape_zyx == ref.volume.shape_zyx:
            size = pixel_size_nm or _pixel_size(pred, pred_path)
            grid = evaluate_volumes(pred_array, ref.read(), pixel_size_nm=size, central_slice=central_slice)
            return Evaluation(source=None, model_grid=grid)
        if pred.placement is None:
            raise EvaluationError(
                f"{pred_path} (shape {pred.volume.shape_zyx}) and {ref_path} (shape {ref.volume.shape_zyx}) "
                "are not on one grid, and the prediction does not say where it lies"
            )
        ref_grid = reference_on_grid(ref, pred.placement, pred_array.shape)
        size = pixel_size_nm or _pixel_size(pred, pred_path)
        grid = evaluate_volumes(pred_array, ref_grid, pixel_size_nm=size, central_slice=central_slice)
        return Evaluation(source=_at_source(pred_path, ref, label, central_slice), model_grid=grid)
    except (ValueError, VolumeError) as exc:
        raise EvaluationError(str(exc)) from None
    finally:
        pred.volume.close()
        ref.volume.close()


def _at_source(pred_path: Path, ref: BinarySource, label: str, central_plane: int | None) -> Table1:
    """The prediction against ``ref``'s envelope as it is, at the source resolution, over the
    prediction's region (clipped to the reference); ``central_plane`` is a plane of the prediction."""
    prediction = PredictionOnSource.open(pred_path, label)
    try:
        region = prediction.placement.region.clipped(ref.volume.shape_zyx)
        if (region.depth, region.height, region.width) != prediction.placement.region_zyx:
            raise EvaluationError("the prediction's region does not lie inside the reference volume")
        ys, xs = slice(region.y, region.y + region.height), slice(region.x, region.x + region.width)
        reference = ((z, as_binary(ref.volume.read(z, ys, xs))) for z in range(region.z, region.z + region.depth))
        pixel_nm = float(ref.volume.voxel_size_nm[1]) if ref.voxel_known else prediction.pixel_size_nm
        accumulator = score_slices(prediction.slice, reference, pixel_nm)
        if central_plane is None:
            return accumulator.table()
        z = region.z + central_plane * prediction.placement.factor_zyx[0]
        if not region.z <= z < region.z + region.depth:
            raise EvaluationError(f"central slice {central_plane} is outside the prediction")
        pred_slice, ref_slice = prediction.slice(z), as_binary(ref.volume.read(z, ys, xs))
        return replace(accumulator.table(), area_f_measure=area_f_measure(pred_slice, ref_slice), central_slice=z)
    finally:
        prediction.close()


def _pixel_size(pred: BinarySource, path: Path) -> float:
    if not pred.voxel_known:
        raise EvaluationError(f"{path} does not say its pixel size; give --pixel-size-nm")
    y_nm, x_nm = pred.volume.voxel_size_nm[1:]
    if abs(y_nm - x_nm) > 1e-6 * max(y_nm, x_nm):
        raise EvaluationError(f"{path}: pixels are not square ({y_nm} x {x_nm} nm); give --pixel-size-nm")
    return float(y_nm)
