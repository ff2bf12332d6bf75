"""A synthetic classification export in the exact format Zooniverse writes, with the truth beside it.

Several regions of interest, each one synthetic nucleus (:mod:`.shapes`), become one subject per slice:
a five-frame flipbook whose middle frame is the subject's own slice and whose other frames show the
planes 250 nm and 500 nm above and below, so neighbouring subjects show each other's slices. A crowd
(:mod:`.crowd`) classifies them over months; rows are written in classification-id order, subjects
interleaved, exactly as the project's classification export has them (reference §3): the same columns
and quoting, ``metadata`` and ``subject_data`` as Panoptes stores them, and marks as each front end
records them. The old front end (PFE) rounds points to 0.1 px and drops repeats; the new one (FEM)
rounds to 0.01 px, drops lines of 20 points or fewer and closes a line whose end comes back within
10 px of its start. The project moves from the old front end to the new one part-way through, as real
projects did, so ``fem_fraction`` of the classifications (the latest) come from FEM.

Beside the CSV: ``truth/<subject_id>.png``, each subject's own slice's nucleus (0/255), and
``truth.json``, what every subject shows and how every volunteer behaves.

Large exports are made one region per process and merged in id order; the result depends only on the
generator passed in, not on the number of processes.
"""

from __future__ import annotations

import csv
import enum
import hashlib
import heapq
import json
import math
import multiprocessing
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from etchacell_loop.annotations import EXPORT_COLUMNS
from etchacell_loop.simulation.crowd import (
    Assignment,
    CrowdMix,
    SimStroke,
    Volunteer,
    assign_crowd,
    spread_classifications,
    trace,
)
from etchacell_loop.simulation.shapes import PIXEL_SIZE_NM, SLICE_SPACING_NM, SliceTruth, draw_nucleus
from etchacell_loop.subject_metadata import (
    IMAGE_KEY,
    JPEG_QUALITY_KEY,
    SCALING_KEY,
    XY_RESOLUTION_KEY,
    Z_RESOLUTION_KEY,
    layout_metadata,
)

FLIPBOOK_OFFSETS_SLICES = (-10, -5, 0, 5, 10)  # ±500 nm and ±250 nm at 50 nm per slice
TARGET_FRAME = 2
FEM_MIN_POINTS = 20  # FEM keeps a line only with more points than this
FEM_CLOSE_PX = 10.0  # FEM closes a line whose end is this near its start
FEM_LINE_RESOLUTION_PX = 0.5  # FEM ignores pointer moves shorter than this
FEM_REVISION = "5b0e7f3c1a9d24e86c3f0b71d9a2e4c85f6a1d30"  # the front end's build, as FEM reports it
SOURCE_PIXEL_SIZE_NM = 10.0
SCALING_FACTOR = 2  # source pixels per subject pixel
JPEG_QUALITY = 90


class FrontEnd(enum.StrEnum):
    PFE = "pfe"  # the old Panoptes front end
    FEM = "fem"  # the front-end monorepo (metadata.classifier_version "2.0")


@dataclass(frozen=True)
class WorkflowInfo:
    """The tracing workflow as the export names it."""

    workflow_id: int = 21873
    name: str = "Etch a Cell: trace the nuclear envelope"
    version: str = "37.114"
    task: str = "T0"
    task_label: str = "Draw around the edge of the nucleus (the nuclear envelope) in the middle frame."
    tool_label: str = "Nuclear envelope"  # PFE writes it; FEM writes null (the tool has no label string)


@dataclass(frozen=True)
class ExportSpec:
    """What to make: ``n_classifications`` spread over ``n_subjects`` (one subject per slice, regions
    of ``slices_per_roi`` slices), from the crowd ``mix``, the latest ``fem_fraction`` from FEM."""

    n_subjects: int
    n_classifications: int
    mix: CrowdMix = field(default_factory=CrowdMix)
    fem_fraction: float = 0.5
    slices_per_roi: int = 160
    shape_px: tuple[int, int] = (1000, 1000)
    workflow: WorkflowInfo = field(default_factory=WorkflowInfo)
    first_subject_id: int = 31_400_000
    first_classification_id: int = 187_000_000
    start: datetime = datetime(2024, 3, 4, 9, 0, tzinfo=UTC)
    duration_days: float = 240.0

    def __post_init__(self) -> None:
        if self.n_subjects < 1 or self.n_classifications < 0:
            raise ValueError("an export needs at least one subject and no negative classification count")
        if not 0.0 <= self.fem_fraction <= 1.0:
            raise ValueError(f"fem_fraction {self.fem_fraction} is not between 0 and 1")
        if self.slices_per_roi < 1:
            raise ValueError("a region needs at least one slice")


@dataclass(frozen=True)
class SubjectPlan:
    """One flipbook: the region, its own slice and the slice each frame shows."""

    subject_id: int
    roi: str
    z: int
    frame_z: tuple[int, ...]

    def metadata(self) -> dict[str, Any]:
        """The subject's metadata as uploaded: the visible keys of the Etch a Cell upload notebook and
        the hidden layout keys."""
        images = {IMAGE_KEY.format(index=k): f"{self.roi}_z{z:04d}.jpg" for k, z in enumerate(self.frame_z)}
        visible = {
            XY_RESOLUTION_KEY: f"{SOURCE_PIXEL_SIZE_NM:g}",
            Z_RESOLUTION_KEY: f"{SLICE_SPACING_NM:g}",
            SCALING_KEY: str(SCALING_FACTOR),
            JPEG_QUALITY_KEY: str(JPEG_QUALITY),
        }
        return {**images, **visible, **layout_metadata(self.roi, TARGET_FRAME, self.frame_z, SCALING_FACTOR)}

    def subject_data_json(self) -> str:
        return _dumps({str(self.subject_id): {"retired": None, **self.metadata()}})


@dataclass(frozen=True)
class Browser:
    """What a volunteer's browser reports (constant per volunteer)."""

    user_agent: str
    viewport_width_px: int
    viewport_height_px: int
    utc_offset_s: int
    language: str


@dataclass(frozen=True, eq=False)
class ClassificationPlan:
    """One classification before it is drawn: who, which subject, when, with which front end."""

    classification_id: int
    subject_id: int
    volunteer: Volunteer
    browser: Browser
    finished_at_s: float  # Unix time
    duration_s: float
    session: str
    front_end: FrontEnd


@dataclass(frozen=True)
class ExportResult:
    """What was written and a few counts worth printing."""

    csv_path: Path
    truth_dir: Path
    manifest_path: Path
    rows: int
    subjects: int
    rois: int
    volunteers: int
    fem_rows: int
    empty_rows: int
    prolific_rows: int
    points: int
    bytes: int

    @property
    def mean_points(self) -> float:
        drawn = self.rows - self.empty_rows
        return self.points / drawn if drawn else 0.0


def write_synthetic_export(
    spec: ExportSpec, csv_path: Path, rng: np.random.Generator, workers: int = 1
) -> ExportResult:
    """Write the export to ``csv_path`` and the truth beside it (``truth/``, ``truth.json``)."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    truth_dir = csv_path.parent / "truth"
    truth_dir.mkdir(exist_ok=True)
    subjects, rois = plan_subjects(spec)
    assignment = assign_crowd(spec.mix, spread_classifications(spec.n_subjects, spec.n_classifications, rng), rng)
    classifications = plan_classifications(spec, subjects, assignment, rng)
    parts_dir = Path(tempfile.mkdtemp(prefix=".parts-", dir=csv_path.parent))
    try:
        jobs = _roi_jobs(spec, subjects, rois, classifications, rng, truth_dir, parts_dir)
        results = _run_jobs(jobs, workers)
        _merge_parts(csv_path, [job.part_path for job in jobs])
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)
    manifest_path = csv_path.parent / "truth.json"
    _write_manifest(manifest_path, spec, subjects, assignment, results)
    return ExportResult(
        csv_path=csv_path,
        truth_dir=truth_dir,
        manifest_path=manifest_path,
        rows=len(classifications),
        subjects=len(subjects),
        rois=len(rois),
        volunteers=len(assignment.volunteers),
        fem_rows=sum(c.front_end is FrontEnd.FEM for c in classifications),
        empty_rows=sum(r.empty_rows for r in results),
        prolific_rows=sum(c.volunteer.prolific for c in classifications),
        points=sum(r.points for r in results),
        bytes=csv_path.stat().st_size,
    )


def plan_subjects(spec: ExportSpec) -> tuple[list[SubjectPlan], list[tuple[str, int]]]:
    """Subjects in upload order (region by region, slice by slice) and the regions (name, slices):
    regions of nearly equal size, ``slices_per_roi`` at most."""
    n_rois = math.ceil(spec.n_subjects / spec.slices_per_roi)
    sizes = [spec.n_subjects // n_rois + (1 if i < spec.n_subjects % n_rois else 0) for i in range(n_rois)]
    rois = [(f"roi-{i + 1:02d}", size) for i, size in enumerate(sizes)]
    subjects: list[SubjectPlan] = []
    for roi, n_slices in rois:
        for z in range(n_slices):
            frame_z = tuple(min(max(z + offset, 0), n_slices - 1) for offset in FLIPBOOK_OFFSETS_SLICES)
            subjects.append(SubjectPlan(spec.first_subject_id + len(subjects), roi, z, frame_z))
    return subjects, rois


def plan_classifications(
    spec: ExportSpec, subjects: Sequence[SubjectPlan], assignment: Assignment, rng: np.random.Generator
) -> list[ClassificationPlan]:
    """Every classification with its time, id and front end, in id order. Volunteers work in sessions
    spread over the project's months; ids follow the time the server received each classification."""
    finished, durations, sessions = _timeline(spec, assignment, rng)
    order = np.argsort(finished, kind="stable")
    ids = spec.first_classification_id + np.cumsum(rng.integers(1, 30, order.size))
    n_fem = round(spec.fem_fraction * order.size)
    browsers = [random_browser(rng) for _ in assignment.volunteers]
    salt = rng.bytes(16).hex()
    plans = []
    for rank, index in enumerate(order):
        volunteer_index = int(assignment.volunteer_index[index])
        volunteer = assignment.volunteers[volunteer_index]
        session = hashlib.sha256(f"{salt}:{volunteer.ip_token}:{sessions[index]}".encode()).hexdigest()
        plans.append(
            ClassificationPlan(
                classification_id=int(ids[rank]),
                subject_id=subjects[int(assignment.subject_index[index])].subject_id,
                volunteer=volunteer,
                browser=browsers[volunteer_index],
                finished_at_s=float(finished[index]),
                duration_s=float(durations[index]),
                session=session,
                front_end=FrontEnd.FEM if rank >= order.size - n_fem else FrontEnd.PFE,
            )
        )
    return plans


# --- what each front end records ------------------------------------------------------------------


def record_stroke(stroke: SimStroke, front_end: FrontEnd) -> SimStroke | None:
    """The stroke as the front end stores it, or None when the front end drops it."""
    return _record_fem(stroke) if front_end is FrontEnd.FEM else _record_pfe(stroke)


def _record_fem(stroke: SimStroke) -> SimStroke | None:
    x, y = _fem_resolution(stroke.x_px, stroke.y_px)
    if x.size <= FEM_MIN_POINTS:
        return None
    if math.hypot(x[-1] - x[0], y[-1] - y[0]) < FEM_CLOSE_PX:
        x, y = np.append(x, x[0]), np.append(y, y[0])
    return SimStroke(stroke.frame, np.round(x, 2), np.round(y, 2))


def _fem_resolution(x: NDArray[np.float64], y: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """FEM adds a pointer position only when it is more than half a pixel from the last one it kept."""
    if x.size < 2 or (np.hypot(np.diff(x), np.diff(y)) > FEM_LINE_RESOLUTION_PX).all():
        return x, y  # the usual case: the mouse never pauses that briefly
    keep = [0]
    for index in range(1, x.size):
        if math.hypot(x[index] - x[keep[-1]], y[index] - y[keep[-1]]) > FEM_LINE_RESOLUTION_PX:
            keep.append(index)
    return x[keep], y[keep]


def _record_pfe(stroke: SimStroke) -> SimStroke | None:
    x, y = np.round(stroke.x_px, 1), np.round(stroke.y_px, 1)
    if x.size > 1:
        keep = np.concatenate([[True], (np.diff(x) != 0) | (np.diff(y) != 0)])
        x, y = x[keep], y[keep]
    return SimStroke(stroke.frame, x, y) if x.size >= 3 else None


def annotations_json(recorded: Sequence[SimStroke], front_end: FrontEnd, workflow: WorkflowInfo) -> str:
    """The export's ``annotations`` column for strokes as the front end recorded them."""
    marks = [_fem_mark(s) if front_end is FrontEnd.FEM else _pfe_mark(s, workflow.tool_label) for s in recorded]
    task = _dumps(workflow.task)
    label = _dumps(workflow.task_label)
    return f'[{{"task":{task},"task_label":{label},"value":[{",".join(marks)}]}}]'


def _fem_mark(stroke: SimStroke) -> str:
    return (
        f'{{"frame":{stroke.frame},"pathX":[{_js_numbers(stroke.x_px)}],"pathY":[{_js_numbers(stroke.y_px)}],'
        '"details":[],"toolType":"freehandLine","toolIndex":0,"tool_label":null}'
    )


def _pfe_mark(stroke: SimStroke, tool_label: str) -> str:
    xs = _js_numbers(stroke.x_px).split(",")
    ys = _js_numbers(stroke.y_px).split(",")
    points = ",".join(f'{{"x":{x},"y":{y}}}' for x, y in zip(xs, ys, strict=True))
    return f'{{"tool":0,"frame":{stroke.frame},"details":[],"tool_label":{_dumps(tool_label)},"points":[{points}]}}'


def _js_numbers(values: NDArray[np.float64]) -> str:
    """Numbers as the browser's JSON writes them: shortest form, whole numbers without ``.0``."""
    text = ",".join(map(repr, values.tolist())) + ","
    return text.replace(".0,", ",")[:-1]


def metadata_json(plan: ClassificationPlan, frames_drawn: Sequence[int], shape_px: tuple[int, int]) -> str:
    """The export's ``metadata`` column, keys in the order PostgreSQL's jsonb keeps them."""
    finished = plan.finished_at_s
    started = finished - plan.duration_s
    browser = plan.browser
    common: dict[str, Any] = {
        "source": "api",
        "session": plan.session,
        "viewport": {"width": browser.viewport_width_px, "height": browser.viewport_height_px},
        "started_at": iso_ms(started),
        "user_agent": browser.user_agent,
        "utc_offset": str(browser.utc_offset_s),
        "finished_at": iso_ms(finished),
        "live_project": True,
        "user_language": browser.language,
        "subject_selection_state": {
            "retired": False,
            "selected_at": iso_ms(started - 0.09),
            "already_seen": False,
            "selection_state": "normal",
            "finished_workflow": False,
            "user_has_finished_workflow": False,
        },
    }
    if plan.front_end is FrontEnd.FEM:
        extra: dict[str, Any] = {
            "feedback": {},
            "revision": FEM_REVISION,
            "user_group_ids": [],
            "subject_flagged": False,
            "classifier_version": "2.0",
            "subject_dimensions": [frame_dimensions(browser, shape_px, fem=True)] * len(FLIPBOOK_OFFSETS_SLICES),
        }
    else:
        extra = {
            "interventions": {"opt_in": False, "messageShown": False},
            "workflow_translation_id": "64102",
            "subject_dimensions": _pfe_dimensions(plan, frames_drawn, shape_px),
        }
    return _dumps(_jsonb_order({**common, **extra}))


def frame_dimensions(browser: Browser, shape_px: tuple[int, int], *, fem: bool) -> dict[str, Any]:
    """One ``subject_dimensions`` entry: the image's natural size and the size the browser laid it out at."""
    height, width = shape_px
    client_height = browser.viewport_height_px * 0.68
    client_width = client_height * width / height
    if fem:  # FEM reports layout sizes as the browser measures them: single-precision fractions
        return {
            "clientWidth": float(np.float32(client_width)),
            "clientHeight": float(np.float32(client_height)),
            "naturalWidth": width,
            "naturalHeight": height,
        }
    return {
        "clientWidth": round(client_width),
        "clientHeight": round(client_height),
        "naturalWidth": width,
        "naturalHeight": height,
    }


def _pfe_dimensions(plan: ClassificationPlan, frames_drawn: Sequence[int], shape_px: tuple[int, int]) -> list[Any]:
    """PFE fills the entry of a frame only once it is shown: the first frames on the way to the target,
    the frames drawn on, and the frames after the target when the volunteer flipped on (decided from
    the classification id, so a row reads the same however often it is made)."""
    shown = set(range(TARGET_FRAME + 1)) | set(frames_drawn)
    if plan.classification_id % 3 == 0:
        shown |= set(range(TARGET_FRAME + 1, len(FLIPBOOK_OFFSETS_SLICES)))
    entry = frame_dimensions(plan.browser, shape_px, fem=False)
    return [entry if frame in shown else None for frame in range(max(shown) + 1)]


# --- planning -----------------------------------------------------------------------------------------

_WEBKIT = "AppleWebKit/537.36 (KHTML, like Gecko)"
_SAFARI = "AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2"
_USER_AGENTS = (
    f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) {_WEBKIT} Chrome/121.0.0.0 Safari/537.36",
    f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) {_WEBKIT} Chrome/121.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:134.0) Gecko/20100101 Firefox/134.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:122.0) Gecko/20100101 Firefox/122.0",
    f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) {_SAFARI} Safari/605.1.15",
    f"Mozilla/5.0 (X11; Linux x86_64) {_WEBKIT} Chrome/120.0.0.0 Safari/537.36",
    f"Mozilla/5.0 (iPad; CPU OS 17_2 like Mac OS X) {_SAFARI} Mobile/15E148 Safari/604.1",
)
_VIEWPORTS = ((1920, 947), (1536, 730), (1440, 789), (1715, 1064), (1366, 657), (2560, 1289), (1024, 1256))
_UTC_OFFSETS_S = (0, 0, -3600, 18000, 14400, 21600, 25200, -7200, -19800, -36000)
_LANGUAGES = ("en", "en", "en", "en", "de", "fr", "es", "it")


def random_browser(rng: np.random.Generator) -> Browser:
    """A volunteer's browser: a common user agent, viewport, time zone and language."""
    width, height = _VIEWPORTS[int(rng.integers(len(_VIEWPORTS)))]
    return Browser(
        user_agent=_USER_AGENTS[int(rng.integers(len(_USER_AGENTS)))],
        viewport_width_px=width,
        viewport_height_px=height,
        utc_offset_s=_UTC_OFFSETS_S[int(rng.integers(len(_UTC_OFFSETS_S)))],
        language=_LANGUAGES[int(rng.integers(len(_LANGUAGES)))],
    )


def _timeline(
    spec: ExportSpec, assignment: Assignment, rng: np.random.Generator
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.intp]]:
    """Finish time, duration and session number of every classification. A volunteer works in
    sessions (a handful of subjects for most, dozens for the prolific) at random moments of the
    project; within a session each subject takes about a minute."""
    n = assignment.n_classifications
    finished = np.zeros(n, dtype=np.float64)
    sessions = np.zeros(n, dtype=np.intp)
    durations = rng.lognormal(math.log(55.0), 0.5, n) + 8.0
    start_s = spec.start.timestamp()
    span_s = spec.duration_days * 86_400.0
    by_volunteer = np.argsort(assignment.volunteer_index, kind="stable")
    bounds = np.flatnonzero(np.diff(assignment.volunteer_index[by_volunteer])) + 1
    for group in np.split(by_volunteer, bounds):
        if group.size == 0:
            continue
        group = group[rng.permutation(group.size)]  # the order the volunteer met the subjects in
        volunteer = assignment.volunteers[int(assignment.volunteer_index[group[0]])]
        mean_session = 30.0 if volunteer.prolific else 8.0
        session_of = _session_numbers(group.size, mean_session, rng)
        session_start = start_s + np.sort(rng.uniform(0, span_s, int(session_of[-1]) + 1))
        step = durations[group] + rng.uniform(1.0, 6.0, group.size)  # the work plus loading the next subject
        elapsed = np.cumsum(step)
        first = np.searchsorted(session_of, session_of)  # each classification's session's first one
        finished[group] = session_start[session_of] + elapsed - (elapsed[first] - step[first])
        sessions[group] = session_of
    return finished, durations, sessions


def _session_numbers(count: int, mean_size: float, rng: np.random.Generator) -> NDArray[np.intp]:
    """Session number of each of a volunteer's ``count`` classifications (geometric session sizes)."""
    sizes = rng.geometric(1.0 / mean_size, count)
    return np.repeat(np.arange(count), sizes)[:count].astype(np.intp)


@dataclass(frozen=True, eq=False)
class _RoiJob:
    roi: str
    n_slices: int
    shape_px: tuple[int, int]
    workflow: WorkflowInfo
    subjects: tuple[SubjectPlan, ...]
    classifications: tuple[ClassificationPlan, ...]
    shape_rng: np.random.Generator
    trace_rng: np.random.Generator
    truth_dir: Path
    part_path: Path


@dataclass(frozen=True)
class _RoiResult:
    roi: str
    nucleus_px: dict[int, int]  # subject id → truth area
    empty_rows: int
    points: int


def _roi_jobs(
    spec: ExportSpec,
    subjects: Sequence[SubjectPlan],
    rois: Sequence[tuple[str, int]],
    classifications: Sequence[ClassificationPlan],
    rng: np.random.Generator,
    truth_dir: Path,
    parts_dir: Path,
) -> list[_RoiJob]:
    roi_of = {s.subject_id: s.roi for s in subjects}
    per_roi: dict[str, list[ClassificationPlan]] = {roi: [] for roi, _ in rois}
    for plan in classifications:
        per_roi[roi_of[plan.subject_id]].append(plan)
    shape_rngs, trace_rngs = rng.spawn(len(rois)), rng.spawn(len(rois))
    return [
        _RoiJob(
            roi=roi,
            n_slices=n_slices,
            shape_px=spec.shape_px,
            workflow=spec.workflow,
            subjects=tuple(s for s in subjects if s.roi == roi),
            classifications=tuple(per_roi[roi]),
            shape_rng=shape_rngs[index],
            trace_rng=trace_rngs[index],
            truth_dir=truth_dir,
            part_path=parts_dir / f"{roi}.csv",
        )
        for index, (roi, n_slices) in enumerate(rois)
    ]


def _run_jobs(jobs: Sequence[_RoiJob], workers: int) -> list[_RoiResult]:
    if workers <= 1 or len(jobs) <= 1:
        return [_render_roi(job) for job in jobs]
    context = multiprocessing.get_context("spawn")  # no inherited state: the same rows whatever the platform
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        return list(pool.map(_render_roi, jobs))


def _render_roi(job: _RoiJob) -> _RoiResult:
    """Draw one region's nucleus, write its truth images and its rows (sorted by id) to a part file."""
    model = draw_nucleus(job.shape_rng, job.n_slices, job.shape_px)
    by_subject: dict[int, list[ClassificationPlan]] = {s.subject_id: [] for s in job.subjects}
    for plan in job.classifications:
        by_subject[plan.subject_id].append(plan)
    cache: dict[int, SliceTruth] = {}
    rows: list[tuple[int, list[str]]] = []
    nucleus_px: dict[int, int] = {}
    empty = points = 0
    for subject in sorted(job.subjects, key=lambda s: s.z):
        for z in [z for z in cache if z < subject.z + min(FLIPBOOK_OFFSETS_SLICES)]:
            del cache[z]
        for z in subject.frame_z:
            if z not in cache:
                cache[z] = model.slice_truth(z)
        frames = [cache[z] for z in subject.frame_z]
        own = frames[TARGET_FRAME]
        _write_truth(job.truth_dir / f"{subject.subject_id}.png", own)
        nucleus_px[subject.subject_id] = int(own.nucleus.sum())
        subject_data = subject.subject_data_json()
        for plan in by_subject[subject.subject_id]:
            strokes = trace(plan.volunteer, frames, TARGET_FRAME, job.trace_rng)
            recorded = [r for r in (record_stroke(s, plan.front_end) for s in strokes) if r is not None]
            empty += not recorded
            points += sum(r.n_points for r in recorded)
            rows.append((plan.classification_id, _row(plan, recorded, subject_data, job)))
    rows.sort(key=lambda item: item[0])
    with job.part_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerows(row for _, row in rows)
    return _RoiResult(job.roi, nucleus_px, empty, points)


def _row(plan: ClassificationPlan, recorded: Sequence[SimStroke], subject_data: str, job: _RoiJob) -> list[str]:
    volunteer = plan.volunteer
    frames_drawn = sorted({s.frame for s in recorded})
    return [
        str(plan.classification_id),
        volunteer.key,
        "" if volunteer.user_id is None else str(volunteer.user_id),
        volunteer.ip_token,
        str(job.workflow.workflow_id),
        job.workflow.name,
        job.workflow.version,
        _ruby_time(plan.finished_at_s + 0.2),  # the server stamps the classification as it arrives
        "",
        "",
        metadata_json(plan, frames_drawn, job.shape_px),
        annotations_json(recorded, plan.front_end, job.workflow),
        subject_data,
        str(plan.subject_id),
    ]


def _write_truth(path: Path, truth: SliceTruth) -> None:
    image = Image.fromarray(np.where(truth.nucleus, np.uint8(255), np.uint8(0)), mode="L")
    image.save(path, compress_level=1)


def _merge_parts(csv_path: Path, parts: Sequence[Path]) -> None:
    """Interleave the regions' part files by classification id (each is already in id order; a row
    is one line, since the JSON columns never hold a raw newline)."""
    handles = [part.open(encoding="utf-8", newline="") for part in parts]
    try:
        with csv_path.open("w", encoding="utf-8", newline="") as out:
            csv.writer(out, lineterminator="\n").writerow(EXPORT_COLUMNS)
            out.writelines(heapq.merge(*handles, key=_leading_id))
    finally:
        for handle in handles:
            handle.close()


def _leading_id(line: str) -> int:
    return int(line[: line.index(",")])


def _write_manifest(
    path: Path,
    spec: ExportSpec,
    subjects: Sequence[SubjectPlan],
    assignment: Assignment,
    results: Sequence[_RoiResult],
) -> None:
    areas = {sid: area for result in results for sid, area in result.nucleus_px.items()}
    counts = Counter(int(i) for i in assignment.volunteer_index)
    manifest = {
        "pixel_size_nm": PIXEL_SIZE_NM,
        "slice_spacing_nm": SLICE_SPACING_NM,
        "target_frame": TARGET_FRAME,
        "flipbook_offsets_slices": list(FLIPBOOK_OFFSETS_SLICES),
        "spec": _spec_summary(spec),
        "subjects": {
            str(s.subject_id): {
                "roi": s.roi,
                "z": s.z,
                "frame_slices": list(s.frame_z),
                "truth": f"truth/{s.subject_id}.png",
                "nucleus_px": areas.get(s.subject_id, 0),
            }
            for s in subjects
        },
        "volunteers": {
            v.key: {
                "behaviour": v.behaviour.value,
                "prolific": v.prolific,
                "user_id": v.user_id,
                "classifications": counts.get(index, 0),
                "offset_px": round(v.offset_px, 2),
            }
            for index, v in enumerate(assignment.volunteers)
        },
    }
    path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def _spec_summary(spec: ExportSpec) -> dict[str, Any]:
    return {
        "n_subjects": spec.n_subjects,
        "n_classifications": spec.n_classifications,
        "fem_fraction": spec.fem_fraction,
        "slices_per_roi": spec.slices_per_roi,
        "shape_px": list(spec.shape_px),
        "workflow": asdict(spec.workflow),
        "mix": {
            "fractions": {b.value: f for b, f in spec.mix.fractions.items()},
            "prolific_behaviours": [b.value for b in spec.mix.prolific_behaviours],
            "prolific_share": spec.mix.prolific_share,
            "logged_in_fraction": spec.mix.logged_in_fraction,
            "mean_classifications": spec.mix.mean_classifications,
        },
    }


# --- formatting ---------------------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _jsonb_order(value: Any) -> Any:
    """Keys as PostgreSQL's jsonb stores them (shorter first, then bytewise), which is how the
    export's metadata reads."""
    if isinstance(value, Mapping):
        return {k: _jsonb_order(value[k]) for k in sorted(value, key=lambda k: (len(k.encode()), k.encode()))}
    if isinstance(value, list):
        return [_jsonb_order(item) for item in value]
    return value


def iso_ms(unix_s: float) -> str:
    """A time as browsers' ``Date.toISOString()`` writes it (UTC, milliseconds, ``Z``)."""
    moment = datetime.fromtimestamp(unix_s, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _ruby_time(unix_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix_s))
