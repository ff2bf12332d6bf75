"""A synthetic ROI whose image is its own truth envelope on the model grid.

A "perfect model" returns what it is shown, so predicting this image gives the truth back on every
axis; whatever the prediction then lacks, post-processing removed. The nucleus is big enough for
the paper's post-processing to apply to it as to a real one: its envelope on the 50 nm grid has
well over the paper's minimum component of 10,000 voxels (about 16,500). It is small enough to generate
in seconds: one cell in 3 x 8.5 x 8.5 um at 50 x 10 x 10 nm, its nucleus 4.8 um across and 2.7 um
deep.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from etchacell_loop.imaging.synth_volume import SynthSpec, generate_volume
from etchacell_loop.imaging.volume import RoiBox, open_volume
from etchacell_loop.model.evaluation import open_binary, reference_on_grid
from etchacell_loop.model.predict import PredictionGrid, prediction_grid
from tests.imaging.support import write_ome_zarr

MODEL_VOXEL_NM = 50.0
SPEC = SynthSpec(shape=(60, 850, 850), voxel_size_nm=(50.0, 10.0, 10.0), cells=1, seed=3)
PAPER_MIN_COMPONENT_VOXELS = 10_000


@dataclass(frozen=True)
class TruthRoi:
    """The truth image (an OME-Zarr at the source voxel size listing the ROI), the ROI, and the
    truth envelope on the model grid over it."""

    path: Path
    roi: RoiBox
    truth: NDArray[np.bool_]


def placement(grid: PredictionGrid, source_voxel_nm: tuple[float, float, float]) -> dict[str, Any]:
    """Where the grid lies in its source, as a prediction records it."""
    region = grid.region
    return {
        "roi": region.as_dict(),
        "offset_zyx_px": [region.z, region.y, region.x],
        "factor_zyx": list(grid.factor_zyx),
        "source_voxel_size_nm": list(source_voxel_nm),
        "voxel_size_nm": list(grid.voxel_size_nm),
    }


def write_truth_roi(folder: Path) -> TruthRoi:
    """Generate :data:`SPEC`, bring its ROI's truth envelope to the model grid, and write an image
    that is that truth (255 on the envelope, 0 elsewhere), each model voxel repeated over the
    source voxels it averages, so the prediction's resampling gives the truth back exactly."""
    synthetic = folder / "synthetic.zarr"
    generate_volume(synthetic, SPEC)
    with open_volume(synthetic) as volume:
        roi = volume.rois[0]
        grid = prediction_grid(volume, MODEL_VOXEL_NM, roi)
    truth = reference_on_grid(open_binary(synthetic), placement(grid, SPEC.voxel_size_nm), grid.shape_zyx)
    region = grid.region
    fz, fy, fx = grid.factor_zyx
    repeated = truth.repeat(fz, axis=0).repeat(fy, axis=1).repeat(fx, axis=2)
    image = np.zeros(SPEC.shape, dtype=np.uint8)
    image[
        region.z : region.z + region.depth, region.y : region.y + region.height, region.x : region.x + region.width
    ] = np.where(repeated[: region.depth, : region.height, : region.width], 255, 0)
    path = write_ome_zarr(
        folder / "truth-image.zarr", image, scale=SPEC.voxel_size_nm, etchacell={"rois": [roi.as_dict()]}
    )
    return TruthRoi(path, roi, truth)


def f_measure(predicted: NDArray[np.bool_], truth: NDArray[np.bool_]) -> float:
    """Voxel-wise F-measure (Dice): ``2 |P ∩ T| / (|P| + |T|)``."""
    both = int(np.count_nonzero(predicted & truth))
    return 2.0 * both / max(int(np.count_nonzero(predicted)) + int(np.count_nonzero(truth)), 1)
