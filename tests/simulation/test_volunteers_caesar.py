"""Simulated volunteers correct the machine's marks pre-loaded from Caesar, as the new front end shows them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from etchacell_loop.annotations import parse_classification
from etchacell_loop.loop.machine_marks import envelope_marks, is_machine_mark_id
from etchacell_loop.panoptes.caesar import CaesarGateway, connect_caesar
from etchacell_loop.panoptes.gateway import connect
from etchacell_loop.sandbox.harness import SandboxProcess
from etchacell_loop.simulation.correction import CorrectorMix, envelope_distance_px
from etchacell_loop.simulation.crowd import CrowdMix
from etchacell_loop.simulation.truth import open_volume_truth, subject_crop, subject_truth
from etchacell_loop.simulation.volunteers import RunOptions, VolunteerCrowd, volumes_by_name
from tests.panoptes.support import FAST_POLICY, panoptes_settings
from tests.simulation.sandbox_support import flipbooks, project_classifications, upload
from tests.simulation.truth_volumes import subject_metadata, write_truth_volume

TARGET_FRAME = 2


@pytest.fixture(scope="module")
def volume_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("volume") / "hela.zarr"
    write_truth_volume(path)
    return path


@pytest.fixture
def caesar(sandbox: SandboxProcess) -> Iterator[CaesarGateway]:
    settings = panoptes_settings(sandbox).model_copy(update={"caesar_endpoint": sandbox.url})
    with connect(settings, FAST_POLICY) as panoptes, connect_caesar(panoptes, settings, FAST_POLICY) as gateway:
        yield gateway


def run_crowd(sandbox: SandboxProcess, workflow_id: int, volume_path: Path) -> list[str]:
    """Careful volunteers and correctors, all on the old front end unless the workflow makes them use
    the new one."""
    options = RunOptions(
        workflow_id=workflow_id,
        mix=CrowdMix.parse("careful=1"),
        seed=4,
        until_retired=True,
        fem_fraction=0.0,
        correctors=CorrectorMix.parse("careful=1"),
    )
    with VolunteerCrowd(sandbox.url, options, volumes_by_name([volume_path])) as crowd:
        report = crowd.run()
    assert report.stop_reason == "every subject is retired"
    return [p.kind for p in report.posted]


def test_volunteers_keep_good_machine_marks_and_redraw_bad_ones(
    sandbox: SandboxProcess, caesar: CaesarGateway, volume_path: Path, tmp_path: Path
) -> None:
    sandbox.clear_faults()
    ids = sandbox.seed(retirement_count=2)
    workflow_id, project_id = ids["correction_workflow_id"], ids["project_id"]  # Caesar data fetching on
    good_id, wide_id = upload(sandbox, workflow_id, project_id, flipbooks(tmp_path, [6, 6]))
    nucleus = subject_truth(open_volume_truth(volume_path), subject_crop(subject_metadata("hela", 6)))[
        TARGET_FRAME
    ].nucleus
    good = envelope_marks(nucleus, frame=TARGET_FRAME, subject_id=good_id)
    wide = envelope_marks(ndimage.binary_dilation(nucleus, iterations=8), frame=TARGET_FRAME, subject_id=wide_id)
    caesar.push_reduction(workflow_id, good_id, good)
    caesar.push_reduction(workflow_id, wide_id, wide)

    kinds = run_crowd(sandbox, workflow_id, volume_path)
    assert set(kinds) == {"correction"}

    distance = envelope_distance_px(nucleus)
    rows = project_classifications(sandbox, project_id)
    assert {r["links"]["subjects"][0] for r in rows} == {str(good_id), str(wide_id)}
    for row in rows:
        assert row["metadata"]["classifier_version"] == "2.0"  # only the new front end pre-loads marks
        marks = row["annotations"][0]["value"]
        if row["links"]["subjects"][0] == str(good_id):
            # an untouched mark comes back exactly as it was loaded, with its id
            assert [(m["markId"], m["pathX"], m["pathY"], m["frame"]) for m in marks] == [
                (m["markId"], m["pathX"], m["pathY"], m["frame"]) for m in good
            ]
            continue
        parsed = parse_classification(row["annotations"], row["metadata"])
        assert parsed.tracings, "the wrong outline was redrawn"
        for tracing in parsed.tracings:
            assert not is_machine_mark_id(tracing.mark_id) and tracing.mark_id
            assert tracing.frame == TARGET_FRAME
            rows_px = np.clip(np.round(tracing.y_px).astype(int), 0, nucleus.shape[0] - 1)
            cols_px = np.clip(np.round(tracing.x_px).astype(int), 0, nucleus.shape[1] - 1)
            assert float(np.median(distance[rows_px, cols_px])) < 2.0


def test_without_caesar_data_fetching_reductions_are_not_shown(
    sandbox: SandboxProcess, caesar: CaesarGateway, volume_path: Path, tmp_path: Path
) -> None:
    sandbox.clear_faults()
    ids = sandbox.seed(retirement_count=2)
    workflow_id, project_id = ids["segmentation_workflow_id"], ids["project_id"]  # no Caesar data fetching
    (subject_id,) = upload(sandbox, workflow_id, project_id, flipbooks(tmp_path, [6]))
    nucleus = subject_truth(open_volume_truth(volume_path), subject_crop(subject_metadata("hela", 6)))[
        TARGET_FRAME
    ].nucleus
    caesar.push_reduction(workflow_id, subject_id, envelope_marks(nucleus, frame=TARGET_FRAME, subject_id=subject_id))

    assert set(run_crowd(sandbox, workflow_id, volume_path)) == {"tracing"}
    for row in project_classifications(sandbox, project_id):
        assert "classifier_version" not in row["metadata"]  # the old front end, as the options ask
        assert all("markId" not in mark for mark in row["annotations"][0]["value"])
