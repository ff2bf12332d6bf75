"""Simulated volunteers classify in a real sandbox as the front ends do, and behave like the paper's crowd."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from etchacell_loop.annotations import parse_classification
from etchacell_loop.sandbox.harness import SandboxProcess
from etchacell_loop.simulation.correction import Corrector, CorrectorMix, envelope_distance_px
from etchacell_loop.simulation.crowd import Behaviour, CrowdMix
from etchacell_loop.simulation.shapes import outlines
from etchacell_loop.simulation.truth import open_volume_truth, subject_crop, subject_truth
from etchacell_loop.simulation.volunteers import (
    EffortProcess,
    RunOptions,
    RunReport,
    VolunteerCrowd,
    VolunteerRunError,
    gini,
    simulate_effort,
    volumes_by_name,
)
from tests.simulation.sandbox_support import flipbooks, project_classifications, upload
from tests.simulation.truth_volumes import subject_jpeg, subject_metadata, write_truth_volume


@pytest.fixture(scope="module")
def volume_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("volume") / "hela.zarr"
    write_truth_volume(path)
    return path


def test_a_crowd_classifies_like_the_front_ends(sandbox: SandboxProcess, volume_path: Path, tmp_path: Path) -> None:
    sandbox.clear_faults()
    ids = sandbox.seed(retirement_count=30)
    workflow_id, project_id = ids["segmentation_workflow_id"], ids["project_id"]
    subject_ids = upload(sandbox, workflow_id, project_id, flipbooks(tmp_path, [4, 5, 6, 7]))
    mix = CrowdMix.parse("careful=0.5,sloppy=0.2,partial=0.1,nucleolus=0.1,empty=0.1").with_prolific(1, 0.2)
    options = RunOptions(workflow_id=workflow_id, mix=mix, seed=11, max_classifications=40)
    with VolunteerCrowd(sandbox.url, options, volumes_by_name([volume_path])) as crowd:
        report = crowd.run()
    assert report.classifications == 40 and report.stop_reason == "reached 40 classifications"

    rows = project_classifications(sandbox, project_id)
    assert sorted(int(r["id"]) for r in rows) == sorted(p.classification_id for p in report.posted)
    posted = {p.classification_id: p for p in report.posted}
    fem = [r for r in rows if r["metadata"].get("classifier_version") == "2.0"]
    pfe = [r for r in rows if "classifier_version" not in r["metadata"]]
    assert fem and pfe
    assert all(r["annotations"][0]["taskType"] == "drawing" for r in fem)
    assert all("points" in m for r in pfe for m in r["annotations"][0]["value"])
    for row in rows:
        metadata = row["metadata"]
        for key in ("started_at", "finished_at", "user_agent", "workflow_version", "source", "utc_offset"):
            assert key in metadata
        assert metadata["subject_dimensions"][0]["naturalWidth"] == 70
        assert metadata["subject_selection_state"]["selection_state"] == "normal"

    # nobody classifies a subject twice (signed in: the user; anonymous: the browser session)
    who = Counter((r["links"]["user"] or r["metadata"]["session"], r["links"]["subjects"][0]) for r in rows)
    assert max(who.values()) == 1
    assert any(r["links"]["user"] is None for r in rows) and any(r["links"]["user"] for r in rows)

    # careful volunteers trace the target frame's envelope closely
    volume = open_volume_truth(volume_path)
    subjects = {sid: z for sid, z in zip(subject_ids, [4, 5, 6, 7], strict=True)}
    checked = 0
    for row in rows:
        if posted[int(row["id"])].behaviour is not Behaviour.CAREFUL:
            continue
        parsed = parse_classification(row["annotations"], row["metadata"])
        assert not parsed.invalid and parsed.tracings
        z = subjects[int(row["links"]["subjects"][0])]
        nucleus = subject_truth(volume, subject_crop(subject_metadata("hela", z)))[2].nucleus
        distance = envelope_distance_px(nucleus)
        for tracing in parsed.tracings:
            assert tracing.frame == 2
            rows_px = np.clip(np.round(tracing.y_px).astype(int), 0, 74)
            cols_px = np.clip(np.round(tracing.x_px).astype(int), 0, 69)
            assert float(np.median(distance[rows_px, cols_px])) < 2.0
            checked += 1
    assert checked >= 5
    prolific = [p for p in report.posted if p.prolific]
    assert prolific and {p.behaviour for p in prolific} == {Behaviour.NUCLEOLUS}
    assert {p.front_end.value for p in report.posted} == {"fem", "pfe"}


def test_who_classifies_is_the_seeds_alone_whatever_the_server_serves(
    sandbox: SandboxProcess, volume_path: Path, tmp_path: Path
) -> None:
    """The sandbox, as Panoptes, serves subjects in a random order, so which subject each volunteer
    traces differs from run to run; who classifies, in which order, signed in or not, with which
    behaviour and front end, must not: a tracing's draws depend on the subject served, and when they
    came from the crowd's one generator an unlucky order made another crowd (one without anonymous
    volunteers failed the test above now and then)."""
    sandbox.clear_faults()
    mix = CrowdMix.parse("careful=0.5,sloppy=0.2,partial=0.1,nucleolus=0.1,empty=0.1").with_prolific(1, 0.2)
    crowds = []
    for _ in range(2):
        ids = sandbox.seed(retirement_count=30)
        upload(sandbox, ids["segmentation_workflow_id"], ids["project_id"], flipbooks(tmp_path, [4, 5, 6, 7]))
        options = RunOptions(workflow_id=ids["segmentation_workflow_id"], mix=mix, seed=11, max_classifications=40)
        with VolunteerCrowd(sandbox.url, options, volumes_by_name([volume_path])) as crowd:
            report = crowd.run()
        crowds.append([(p.volunteer, p.behaviour, p.prolific, p.front_end) for p in report.posted])
    assert crowds[0] == crowds[1]


def test_until_retired_stops_when_every_subject_is_retired(
    sandbox: SandboxProcess, volume_path: Path, tmp_path: Path
) -> None:
    sandbox.clear_faults()
    ids = sandbox.seed(retirement_count=3)
    workflow_id, project_id = ids["segmentation_workflow_id"], ids["project_id"]
    subject_ids = upload(sandbox, workflow_id, project_id, flipbooks(tmp_path, [5, 6, 7]))
    options = RunOptions(workflow_id=workflow_id, mix=CrowdMix.parse("careful=1"), seed=2, until_retired=True)
    with VolunteerCrowd(sandbox.url, options, volumes_by_name([volume_path])) as crowd:
        report = crowd.run()
    assert report.stop_reason == "every subject is retired"
    retired = {r["subject_id"] for r in sandbox.inventory(project_id)["retired"] if r["workflow_id"] == workflow_id}
    assert retired == set(subject_ids)
    per_subject = Counter(p.subject_id for p in report.posted)
    assert set(per_subject) == set(subject_ids) and min(per_subject.values()) >= 3


class _FakeTime:
    """A clock that moves only when the crowd sleeps: the crowd's waits, exactly."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _classified_at(
    sandbox: SandboxProcess, volume_path: Path, tmp_path: Path, subject_gap_s: float
) -> tuple[dict[int, list[float]], _FakeTime]:
    """Eight classifications of two subjects (retired only at 50) by a crowd with ``subject_gap_s``:
    when each subject was classified, by the crowd's clock."""
    sandbox.clear_faults()
    ids = sandbox.seed(retirement_count=50)
    workflow_id, project_id = ids["segmentation_workflow_id"], ids["project_id"]
    upload(sandbox, workflow_id, project_id, flipbooks(tmp_path, [5, 6]))
    fake = _FakeTime()
    options = RunOptions(
        workflow_id=workflow_id, mix=CrowdMix.parse("careful=1"), seed=4, max_classifications=8,
        subject_gap_s=subject_gap_s,
    )  # fmt: skip
    times: dict[int, list[float]] = {}

    def note(report: RunReport) -> None:
        times.setdefault(report.posted[-1].subject_id, []).append(fake.now)

    with VolunteerCrowd(
        sandbox.url, options, volumes_by_name([volume_path]), sleep=fake.sleep, clock=fake.clock
    ) as crowd:
        crowd.run(note)
    return times, fake


def test_a_subject_rests_between_classifications_when_a_gap_is_set(
    sandbox: SandboxProcess, volume_path: Path, tmp_path: Path
) -> None:
    """By default a fast crowd classifies a small set back to back (the demo's monitoring slices
    received 35 classifications in 3 s, far past the stopping rule); with ``subject_gap_s`` each
    subject waits that long before its next classification, and the crowd sleeps until one is due."""
    swarmed, unhurried = _classified_at(sandbox, volume_path, tmp_path, 0.0)
    assert unhurried.slept == [] and sum(len(t) for t in swarmed.values()) == 8
    assert len(swarmed) == 2 and min(len(t) for t in swarmed.values()) >= 2  # each classified back to back
    spaced, waited = _classified_at(sandbox, volume_path, tmp_path, 10.0)
    assert sum(len(t) for t in spaced.values()) == 8 and len(spaced) == 2
    for moments in spaced.values():
        assert min(np.diff(moments)) >= 10.0
    assert sum(waited.slept) >= 30.0  # four rounds of two subjects: three waits of at least 10 s


def test_a_negative_gap_is_refused() -> None:
    with pytest.raises(ValueError, match="gap"):
        RunOptions(workflow_id=1, max_classifications=1, subject_gap_s=-1.0)


class _StopWaiting(Exception):
    pass


def test_a_following_crowd_waits_for_new_subjects_instead_of_stopping(
    sandbox: SandboxProcess, volume_path: Path, tmp_path: Path
) -> None:
    """A live project: before the workflow has any subject set, and once everything is retired, the
    crowd waits, and classifies what arrives next."""
    sandbox.clear_faults()
    ids = sandbox.seed(retirement_count=2)
    workflow_id, project_id = ids["segmentation_workflow_id"], ids["project_id"]
    rounds = [[5], [6, 7]]
    arrived: list[int] = []
    waits: list[float] = []
    seen: list[RunReport] = []

    def wait_then_publish(seconds: float) -> None:
        waits.append(seconds)
        if not rounds:
            raise _StopWaiting  # it waited again once the last subjects were done: enough
        arrived.extend(upload(sandbox, workflow_id, project_id, flipbooks(tmp_path, rounds.pop(0))))

    options = RunOptions(workflow_id=workflow_id, mix=CrowdMix.parse("careful=1"), seed=3, follow=True)
    crowd = VolunteerCrowd(sandbox.url, options, volumes_by_name([volume_path]), sleep=wait_then_publish)
    with crowd, pytest.raises(_StopWaiting):
        crowd.run(seen.append)
    assert waits == [2.0, 2.0, 2.0] and len(arrived) == 3
    per_subject = Counter(p.subject_id for p in seen[-1].posted)
    assert set(per_subject) == set(arrived) and min(per_subject.values()) >= 2


def test_correction_subjects_are_judged_from_the_overlay(
    sandbox: SandboxProcess, volume_path: Path, tmp_path: Path
) -> None:
    """A prediction subject: frame 0 the slice, frame 1 the model's outline in magenta, 9 px too wide."""
    sandbox.clear_faults()
    ids = sandbox.seed(retirement_count=30)
    workflow_id, project_id = ids["correction_workflow_id"], ids["project_id"]
    metadata = {**subject_metadata("hela", 6), "#kind": "prediction", "#frame_slices": "6,6", "#target_frame": "0"}
    truth = subject_truth(open_volume_truth(volume_path), subject_crop(metadata))[0]
    (loop,) = outlines(truth.nucleus)
    centre = loop.mean(axis=0)
    wide = centre + (loop - centre) * 1.25  # the model drew the envelope far too wide
    slice_path = subject_jpeg(tmp_path / "slice.jpg")
    overlay = Image.open(slice_path).convert("RGB")
    ImageDraw.Draw(overlay).line([*map(tuple, wide.tolist()), tuple(wide[0])], fill=(255, 0, 255), width=3)
    overlay_path = tmp_path / "overlay.jpg"
    overlay.save(overlay_path, "JPEG", quality=90)
    upload(sandbox, workflow_id, project_id, [(metadata, [slice_path, overlay_path])])
    careful = CorrectorMix.parse("careful=1")
    options = RunOptions(workflow_id=workflow_id, mix=CrowdMix.parse("careful=1"), seed=5, max_classifications=3)
    with VolunteerCrowd(sandbox.url, replace(options, correctors=careful), volumes_by_name([volume_path])) as crowd:
        report = crowd.run()
    assert {p.kind for p in report.posted} == {"correction"}
    assert {p.corrector for p in report.posted} == {Corrector.CAREFUL}
    distance = envelope_distance_px(truth.nucleus)
    for row in project_classifications(sandbox, project_id):
        parsed = parse_classification(row["annotations"], row["metadata"])
        assert parsed.tracings, "the wrong outline was redrawn"
        for tracing in parsed.tracings:
            assert tracing.frame == 0
            rows_px = np.clip(np.round(tracing.y_px).astype(int), 0, 74)
            cols_px = np.clip(np.round(tracing.x_px).astype(int), 0, 69)
            assert float(np.median(distance[rows_px, cols_px])) < 2.0


def test_correctors_accept_redraw_or_delete_and_record_their_time(
    sandbox: SandboxProcess, volume_path: Path, tmp_path: Path
) -> None:
    """The same wrong overlay judged by each corrector behaviour: accept-anything volunteers trace over
    the machine's outline, over-correctors trace the envelope, empty submitters draw nothing; the
    times recorded in the metadata follow the time model (a look, the outline read, what was drawn)."""
    sandbox.clear_faults()
    ids = sandbox.seed(retirement_count=30)
    workflow_id, project_id = ids["correction_workflow_id"], ids["project_id"]
    metadata = {**subject_metadata("hela", 6), "#kind": "prediction", "#frame_slices": "6,6", "#target_frame": "0"}
    truth = subject_truth(open_volume_truth(volume_path), subject_crop(metadata))[0]
    (loop,) = outlines(truth.nucleus)
    centre = loop.mean(axis=0)
    wide = centre + (loop - centre) * 1.4
    slice_path = subject_jpeg(tmp_path / "slice.jpg")
    overlay = Image.open(slice_path).convert("RGB")
    ImageDraw.Draw(overlay).line([*map(tuple, wide.tolist()), tuple(wide[0])], fill=(255, 0, 255), width=3)
    overlay_path = tmp_path / "overlay.jpg"
    overlay.save(overlay_path, "JPEG", quality=90)
    upload(sandbox, workflow_id, project_id, [(metadata, [slice_path, overlay_path])])
    distance = envelope_distance_px(truth.nucleus)
    medians: dict[Corrector, float] = {}
    seconds: dict[Corrector, float] = {}
    for seed, corrector in enumerate((Corrector.ACCEPT, Corrector.REDRAW, Corrector.EMPTY)):
        options = RunOptions(
            workflow_id=workflow_id,
            mix=CrowdMix.parse("careful=1"),
            seed=10 + seed,
            max_classifications=1,
            correctors=CorrectorMix.parse(f"{corrector.value}=1"),
        )
        with VolunteerCrowd(sandbox.url, options, volumes_by_name([volume_path])) as crowd:
            (posted,) = crowd.run().posted
        row = next(r for r in project_classifications(sandbox, project_id) if int(r["id"]) == posted.classification_id)
        parsed = parse_classification(row["annotations"], row["metadata"])
        recorded = (
            datetime.fromisoformat(row["metadata"]["finished_at"])
            - datetime.fromisoformat(row["metadata"]["started_at"])
        ).total_seconds()
        assert recorded == pytest.approx(posted.seconds, abs=0.002)
        seconds[corrector] = posted.seconds
        points = [(t.y_px, t.x_px) for t in parsed.tracings]
        if corrector is Corrector.EMPTY:
            assert not points
            continue
        rows_px = np.clip(np.round(np.concatenate([p[0] for p in points])).astype(int), 0, 74)
        cols_px = np.clip(np.round(np.concatenate([p[1] for p in points])).astype(int), 0, 69)
        medians[corrector] = float(np.median(distance[rows_px, cols_px]))
    assert medians[Corrector.REDRAW] < 2.0 < medians[Corrector.ACCEPT]  # the acceptor kept the wide outline
    assert seconds[Corrector.EMPTY] < seconds[Corrector.REDRAW]


def test_subjects_of_an_unknown_volume_are_refused(sandbox: SandboxProcess, volume_path: Path, tmp_path: Path) -> None:
    sandbox.clear_faults()
    ids = sandbox.seed()
    upload(sandbox, ids["segmentation_workflow_id"], ids["project_id"], flipbooks(tmp_path, [6]))
    options = RunOptions(workflow_id=ids["segmentation_workflow_id"], max_classifications=1)
    with VolunteerCrowd(sandbox.url, options, {}) as crowd, pytest.raises(VolunteerRunError, match="volume 'hela'"):
        crowd.run()


def test_effort_is_as_unequal_as_on_etch_a_cell() -> None:
    """Gini of classifications per volunteer ≈ 0.83 (paper, §2.3), with the default prolific volunteers."""
    mix = CrowdMix()
    for seed in range(3):
        process = EffortProcess(np.random.default_rng(seed), len(mix.prolific_behaviours), mix.prolific_share, 0.12)
        counts = simulate_effort(20_000, process)
        assert abs(gini(counts) - 0.83) <= 0.05
        assert counts.max() > 50 * np.median(counts)
    assert gini([5, 5, 5, 5]) == 0.0
    assert gini([0, 0, 0, 12]) == pytest.approx(0.75)


def test_options_say_when_to_stop() -> None:
    with pytest.raises(ValueError, match="say when to stop"):
        RunOptions(workflow_id=1)
