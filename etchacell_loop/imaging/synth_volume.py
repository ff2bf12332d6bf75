"""A synthetic SBF-SEM volume with its truth, written to OME-Zarr slice by slice.

The cells come from :mod:`.synth_cells`, the image of each slice from :mod:`.synth_render`; this
module streams them into the layout of :mod:`.omezarr` a chunk-deep block of slices at a time, so
memory stays at one block whatever the volume's depth. The truth beside the image:

- ``labels/nucleus``: uint16, 0 = background, k = the nucleus of cell k;
- ``labels/envelope``: uint8 0/1, the nuclear-envelope band 70 nm wide centred on each slice's
  nucleus boundary (only where a mitotic cell still has envelope);
- ``labels/nucleolus``: uint16, labelled with the id of its nucleus;
- ``labels/organelles``: uint16 instances, their classes in the ``image-label`` properties.

The root's "etchacell" attributes (kind, seed, voxel size, one ROI per nucleus, blank slices,
mitotic nuclei) are written last, so a volume that has them is complete. The same seed and
parameters give byte-identical files, so a volume too big to copy can be made again where it is
needed; :func:`truth_digest` checks that the copy has the same truth (every consensus mask and
every score is measured against it).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray
from scipy import ndimage

from etchacell_loop.imaging.omezarr import (
    DEFAULT_CHUNKS,
    ETCHACELL_KEY,
    MultiscaleWriter,
    create_label,
    create_multiscale,
    create_volume,
)
from etchacell_loop.imaging.synth_cells import VolumeModel, draw_volume
from etchacell_loop.imaging.synth_render import TextureBank, acquisition_plan, render_slice
from etchacell_loop.imaging.volume import RoiBox

SYNTHETIC_KIND = "synthetic-sbfsem"
LABEL_NAMES = ("nucleus", "envelope", "nucleolus", "organelles")
DIGEST_LABELS = ("nucleus", "envelope")  # the truth that subjects, consensus and scores depend on

Progress = Callable[[int, int], None]  # (slices done, slices in all)


@dataclass(frozen=True)
class SynthSpec:
    """What to generate. ``cells`` None: one per 5.6 um square of each layer (three for 1024 x 1024
    at 10 nm). ``roi_margin_nm``: added round each nucleus' bounding box (z, y, x)."""

    shape: tuple[int, int, int] = (64, 1024, 1024)
    voxel_size_nm: tuple[float, float, float] = (50.0, 10.0, 10.0)
    cells: int | None = None
    seed: int = 0
    mitotic: bool = False
    roi_margin_nm: tuple[float, float, float] = (200.0, 500.0, 500.0)


@dataclass(frozen=True)
class SynthReport:
    """What was written and how long it took."""

    path: Path
    shape: tuple[int, int, int]
    voxel_size_nm: tuple[float, float, float]
    cells: int
    organelles: dict[str, int]
    rois: tuple[RoiBox, ...]
    blank_slices: tuple[int, ...]
    seconds: float


def generate_volume(
    path: Path, spec: SynthSpec, *, overwrite: bool = False, progress: Progress | None = None, workers: int = 1
) -> SynthReport:
    """Generate ``spec`` into ``path`` (an OME-Zarr folder). An existing ``path`` is an error, or,
    with ``overwrite``, replaced if it is a zarr store (anything else is never deleted).

    ``workers`` > 1 renders blocks of slices in that many processes while this one writes them in
    order: every slice draws from its own generator, so the files are the same for any number."""
    started = time.perf_counter()
    model = draw_volume(spec.seed, spec.shape, spec.voxel_size_nm, spec.cells, spec.mitotic)
    _clear(path, overwrite)
    root = create_volume(path, name=path.stem, overwrite=overwrite)
    writers = _create_arrays(root, model)
    plan = acquisition_plan(spec.seed, spec.shape[0])
    textures = TextureBank.draw(spec.seed)
    boxes = _BoundingBoxes()
    n_slices = spec.shape[0]
    for z_start, blocks in _rendered_blocks(model, spec, plan, textures, workers):
        for name, writer in writers.items():
            writer.write_block(z_start, blocks[name])
        boxes.update(z_start, blocks["nucleus"])
        if progress is not None:
            progress(min(n_slices, z_start + DEFAULT_CHUNKS[0]), n_slices)
    rois = boxes.rois(spec.shape, spec.voxel_size_nm, spec.roi_margin_nm)
    blank = tuple(z for z, conditions in enumerate(plan) if conditions.state != "normal")
    root.attrs[ETCHACELL_KEY] = _etchacell_attrs(spec, model, rois, blank)
    return SynthReport(
        path=path,
        shape=spec.shape,
        voxel_size_nm=spec.voxel_size_nm,
        cells=len(model.cells),
        organelles=_organelle_counts(model),
        rois=rois,
        blank_slices=blank,
        seconds=time.perf_counter() - started,
    )


def truth_digest(path: Path, labels: tuple[str, ...] = DIGEST_LABELS) -> str:
    """``sha256:<hex>`` of the level-0 ``labels`` of the volume at ``path``: their names, shapes,
    dtypes and voxel values (little-endian), read a chunk-deep block at a time.

    Over values, not stored bytes, so another zarr or compressor version making other chunk files
    of the same truth still agrees; memory stays at one block of one label."""
    root = zarr.open_group(str(path), mode="r")
    digest = hashlib.sha256()
    for name in labels:
        array = root[f"labels/{name}/0"]
        if not isinstance(array, zarr.Array):
            raise ValueError(f"{path}: labels/{name}/0 is not an array")
        dtype = np.dtype(array.dtype).newbyteorder("<")
        digest.update(f"{name}:{dtype.str}:{list(array.shape)}\n".encode())
        depth = array.chunks[0]
        for z in range(0, array.shape[0], depth):
            digest.update(np.ascontiguousarray(array[z : z + depth], dtype=dtype).tobytes())
    return f"sha256:{digest.hexdigest()}"


def _clear(path: Path, overwrite: bool) -> None:
    if not path.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{path} already exists (use --overwrite to replace it)")
    if not path.is_dir() or not any((path / marker).exists() for marker in (".zgroup", ".zarray", "zarr.json")):
        raise FileExistsError(f"{path} exists and is not a zarr store; not replacing it")
    shutil.rmtree(path)


def _create_arrays(root: Any, model: VolumeModel) -> dict[str, MultiscaleWriter]:
    shape, voxel = model.shape, model.voxel_size_nm
    properties = [
        {"label-value": index + 1, "class": organelle.kind} for index, organelle in enumerate(model.organelles)
    ]
    return {
        "image": create_multiscale(root, shape, voxel, np.uint8, name=str(root.attrs["name"]), method="mean"),
        "nucleus": create_label(root, "nucleus", shape, voxel, np.uint16),
        "envelope": create_label(root, "envelope", shape, voxel, np.uint8),
        "nucleolus": create_label(root, "nucleolus", shape, voxel, np.uint16),
        "organelles": create_label(root, "organelles", shape, voxel, np.uint16, properties),
    }


def _block_ranges(n_slices: int) -> list[range]:
    """Chunk-deep runs of slices, so each chunk is written once."""
    depth = DEFAULT_CHUNKS[0]
    return [range(z, min(n_slices, z + depth)) for z in range(0, n_slices, depth)]


def _rendered_blocks(
    model: VolumeModel, spec: SynthSpec, plan: Any, textures: TextureBank, workers: int
) -> Iterator[tuple[int, dict[str, NDArray[Any]]]]:
    """(first slice, blocks) in z order; with ``workers`` > 1 rendered ahead in worker processes,
    at most two blocks per worker in flight so memory stays bounded.

    Workers are spawned, not forked: a caller that has started threads (a deep-learning library,
    zarr's I/O) cannot leave a child holding one of their locks."""
    ranges = _block_ranges(spec.shape[0])
    if workers <= 1:
        for slices in ranges:
            yield slices.start, _render_block(model, spec, plan, textures, slices)
        return
    context = multiprocessing.get_context("spawn")
    state = (model, spec, plan, textures)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=state) as pool:
        pending: deque[tuple[int, Future[dict[str, NDArray[Any]]]]] = deque()
        for slices in ranges:
            pending.append((slices.start, pool.submit(_render_in_worker, slices)))
            if len(pending) >= 2 * workers:
                z_start, future = pending.popleft()
                yield z_start, future.result()
        while pending:
            z_start, future = pending.popleft()
            yield z_start, future.result()


_WORKER_STATE: tuple[VolumeModel, SynthSpec, Any, TextureBank] | None = None


def _init_worker(model: VolumeModel, spec: SynthSpec, plan: Any, textures: TextureBank) -> None:
    """Keep the volume's model in the worker, sent once rather than with every block."""
    global _WORKER_STATE
    _WORKER_STATE = (model, spec, plan, textures)


def _render_in_worker(slices: range) -> dict[str, NDArray[Any]]:
    if _WORKER_STATE is None:
        raise RuntimeError("a render worker was started without the volume's model")
    model, spec, plan, textures = _WORKER_STATE
    return _render_block(model, spec, plan, textures, slices)


def _render_block(
    model: VolumeModel, spec: SynthSpec, plan: Any, textures: TextureBank, slices: range
) -> dict[str, NDArray[Any]]:
    """Image and truth of consecutive slices, each slice from its own random generator."""
    _, height, width = spec.shape
    depth = len(slices)
    blocks: dict[str, NDArray[Any]] = {
        "image": np.zeros((depth, height, width), np.uint8),
        "nucleus": np.zeros((depth, height, width), np.uint16),
        "envelope": np.zeros((depth, height, width), np.uint8),
        "nucleolus": np.zeros((depth, height, width), np.uint16),
        "organelles": np.zeros((depth, height, width), np.uint16),
    }
    for k, z in enumerate(slices):
        geometry = model.slice_geometry(z)
        rng = np.random.default_rng([spec.seed, 3, z])
        blocks["image"][k] = render_slice(geometry, rng, spec.voxel_size_nm[2], textures, plan[z])
        blocks["nucleus"][k] = geometry.nucleus
        blocks["envelope"][k] = geometry.envelope
        blocks["nucleolus"][k] = geometry.nucleolus
        blocks["organelles"][k] = geometry.organelles
    return blocks


@dataclass
class _BoundingBoxes:
    """Each nucleus label's 3-D bounding box, grown block by block: [z0, z1, y0, y1, x0, x1)."""

    boxes: dict[int, list[int]] = field(default_factory=dict)

    def update(self, z_start: int, labels: NDArray[np.uint16]) -> None:
        for index, found in enumerate(ndimage.find_objects(labels)):
            if found is None:
                continue
            zs, ys, xs = found
            seen = [zs.start + z_start, zs.stop + z_start, ys.start, ys.stop, xs.start, xs.stop]
            box = self.boxes.setdefault(index + 1, seen)
            for k in (0, 2, 4):
                box[k], box[k + 1] = min(box[k], seen[k]), max(box[k + 1], seen[k + 1])

    def rois(
        self, shape: tuple[int, int, int], voxel_size_nm: tuple[float, float, float], margin_nm: tuple[float, ...]
    ) -> tuple[RoiBox, ...]:
        """One ROI per nucleus ("cell01", "cell02", … by label): its box plus the margin, clipped."""
        margins = [round(m / v) for m, v in zip(margin_nm, voxel_size_nm, strict=True)]
        rois = []
        for label in sorted(self.boxes):
            z0, z1, y0, y1, x0, x1 = self.boxes[label]
            (z0, z1), (y0, y1), (x0, x1) = (
                (max(0, low - margin), min(size, high + margin))
                for (low, high), margin, size in zip(((z0, z1), (y0, y1), (x0, x1)), margins, shape, strict=True)
            )
            rois.append(RoiBox(f"cell{label:02d}", x0, y0, z0, x1 - x0, y1 - y0, z1 - z0, nucleus_label=label))
        return tuple(rois)


def _etchacell_attrs(
    spec: SynthSpec, model: VolumeModel, rois: tuple[RoiBox, ...], blank: tuple[int, ...]
) -> dict[str, Any]:
    return {
        "kind": SYNTHETIC_KIND,
        "seed": spec.seed,
        "voxel_size_nm": list(spec.voxel_size_nm),
        "rois": [roi.as_dict() for roi in rois],
        "blank_slices": list(blank),
        "mitotic_labels": [cell.label for cell in model.cells if cell.mitotic],
    }


def _organelle_counts(model: VolumeModel) -> dict[str, int]:
    counts: dict[str, int] = {}
    for organelle in model.organelles:
        counts[organelle.kind] = counts.get(organelle.kind, 0) + 1
    return counts
