"""A crowd of simulated volunteers classifying in a Panoptes sandbox, as the classifier front ends do.

Each volunteer is a browser: signed in through the sign-in page and OAuth (or anonymous, known to the
server only by address and browser session), it asks ``/subjects/queued`` what to classify, fetches
the subject and its first frame image, traces it its own way (:func:`crowd.trace`, against the truth
of the volume the subject was cut from) and posts the classification in its front end's format
(:mod:`.browser`). Correction subjects are judged instead (:mod:`.correction`): in a workflow with
``configuration.enable_caesar_data_fetching`` the machine's marks are those of the subject's Caesar
``machineLearnt`` reduction, fetched with the new front end's GraphQL query and corrected in place in
that front end (an untouched mark is posted back as it was loaded, with its ``markId``); otherwise a
``#kind`` = ``prediction`` subject's outline is read from frame 1's magenta overlay.

Who classifies next follows a Yule-Simon process: a new volunteer arrives with probability
``new_volunteer_probability``, otherwise a past classification is picked at random and its volunteer
comes back, so volunteers return in proportion to what they have done already. With the default 0.12
the classifications per volunteer have a Gini coefficient of about 0.83, as the paper measured on Etch
a Cell. Beside them, a few prolific volunteers take ``prolific_share`` of the work, each repeating one
mistake on every subject they see. Nobody classifies a subject twice: signed-in volunteers are never
offered what they have classified, and anonymous ones skip what they saw in their session, as PFE does.

Deterministic for a seed given the same server responses. Who classifies, and how, is the seed's alone
whatever the server serves: what is drawn by hand, which depends on the subject served, has a generator
of its own.
"""

from __future__ import annotations

import io
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from etchacell_loop.sandbox.config import PANOPTES_CLIENT_DEFAULT_ID
from etchacell_loop.simulation.browser import Selection, Visit, api_annotations, api_metadata, new_mark_id
from etchacell_loop.simulation.correction import (
    Corrector,
    CorrectorMix,
    MachineMark,
    SubmittedMark,
    correct_marks,
    marks_from_overlay,
)
from etchacell_loop.simulation.crowd import Behaviour, CrowdMix, SimStroke, Volunteer, make_volunteer, trace
from etchacell_loop.simulation.export import Browser, FrontEnd, random_browser, record_stroke
from etchacell_loop.simulation.shapes import SliceTruth
from etchacell_loop.simulation.timing import TimeModel, path_length_px
from etchacell_loop.simulation.truth import TruthError, VolumeTruth, open_volume_truth, subject_crop, subject_truth
from etchacell_loop.subject_metadata import subject_layout

ACCEPT = "application/vnd.api+json; version=1"
KIND_KEY = "#kind"
PREDICTION_KIND = "prediction"
MACHINE_LEARNT_KEY = "machineLearnt"
# Drawing tools the classifier pre-loads Caesar marks into (front-end-monorepo, ADR 60).
CAESAR_TOOLS = frozenset(
    {"freehandLine", "polygon", "line", "point", "circle", "ellipse", "rectangle", "rotateRectangle"}
)
DEFAULT_NEW_VOLUNTEER_PROBABILITY = 0.12  # Yule-Simon: Gini of effort ≈ 0.83 (see module docstring)
IDLE_LIMIT = 200  # draws in a row that found nothing to classify before giving up
FOLLOW_IDLE_DRAWS = 20  # when following: draws in a row that found nothing before waiting for new subjects


class VolunteerRunError(RuntimeError):
    """The run cannot go on (one line saying why): bad workflow, missing truth, refused request."""


@dataclass(frozen=True)
class RunOptions:
    """What a run does. ``rate_per_s`` 0 posts as fast as the server answers."""

    workflow_id: int
    mix: CrowdMix = field(default_factory=CrowdMix)
    seed: int = 0
    rate_per_s: float = 0.0
    # a subject classified less than this long ago is passed over (a live project's pace per subject; see
    # VolunteerCrowd.run); 0: any subject at any time
    subject_gap_s: float = 0.0
    max_classifications: int | None = None
    until_retired: bool = False
    follow: bool = False  # keep waiting for new subjects (a live project) instead of stopping when idle
    follow_poll_s: float = 2.0
    fem_fraction: float = 0.5
    new_volunteer_probability: float = DEFAULT_NEW_VOLUNTEER_PROBABILITY
    page_size: int = 10
    password: str = "volunteer"
    correctors: CorrectorMix = field(default_factory=CorrectorMix)  # how volunteers treat machine outlines
    time_model: TimeModel = field(default_factory=TimeModel)  # the started_at / finished_at they record

    def __post_init__(self) -> None:
        if self.max_classifications is None and not self.until_retired and not self.follow:
            raise ValueError("say when to stop: a maximum number of classifications, until retired, or follow")
        if self.max_classifications is not None and self.max_classifications < 0:
            raise ValueError("the maximum number of classifications cannot be negative")
        if self.rate_per_s < 0:
            raise ValueError("the rate cannot be negative")
        if self.subject_gap_s < 0:
            raise ValueError("the gap between a subject's classifications cannot be negative")
        if not 0.0 <= self.fem_fraction <= 1.0 or not 0.0 < self.new_volunteer_probability <= 1.0:
            raise ValueError("fem_fraction and new_volunteer_probability are fractions")


# --- who classifies next -------------------------------------------------------------------------------


@dataclass
class EffortProcess:
    """Draws who classifies next: prolific volunteers first by share, others by a Yule-Simon process.

    Volunteer indices: ``0 … prolific-1`` are the prolific ones; ordinary ones are numbered as they
    arrive from ``prolific``. ``exhausted`` volunteers (nothing left for them) are skipped.
    """

    rng: np.random.Generator
    prolific: int
    prolific_share: float
    new_probability: float
    history: list[int] = field(default_factory=list)
    arrived: int = 0
    exhausted: set[int] = field(default_factory=set)

    def next(self) -> int:
        open_prolific = [i for i in range(self.prolific) if i not in self.exhausted]
        if open_prolific and self.rng.random() < self.prolific_share:
            weights = 0.75 ** np.array(open_prolific, dtype=np.float64)
            return open_prolific[int(self.rng.choice(len(open_prolific), p=weights / weights.sum()))]
        for _ in range(8):  # a returning volunteer with nothing left makes way for someone else
            if not self.history or self.rng.random() < self.new_probability:
                break
            index = self.history[int(self.rng.integers(len(self.history)))]
            if index not in self.exhausted:
                return index
        self.arrived += 1
        return self.prolific + self.arrived - 1

    def record(self, index: int) -> None:
        """A classification by ``index`` was made (ordinary volunteers only make others come back)."""
        if index >= self.prolific:
            self.history.append(index)


def simulate_effort(n_classifications: int, process: EffortProcess) -> NDArray[np.intp]:
    """Classifications per volunteer when nobody ever runs out of subjects (for calibration and tests)."""
    counts: Counter[int] = Counter()
    for _ in range(n_classifications):
        index = process.next()
        process.record(index)
        counts[index] += 1
    return np.array(sorted(counts.values()), dtype=np.intp)


def gini(counts: Sequence[int] | NDArray[np.intp]) -> float:
    """Gini coefficient of non-negative counts (0: all equal; towards 1: one does everything)."""
    values = np.sort(np.asarray(counts, dtype=np.float64))
    n = values.size
    if n == 0 or values.sum() == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float(np.dot(2 * ranks - n - 1, values) / (n * values.sum()))


# --- one simulated volunteer ---------------------------------------------------------------------------


@dataclass
class SimVolunteer:
    """One person at one browser: behaviour, front end, identity and what they saw this session."""

    volunteer: Volunteer
    front_end: FrontEnd
    browser: Browser
    address: str
    session: str
    login: str | None = None
    token: str | None = None
    seen: set[int] = field(default_factory=set)
    classifications: int = 0
    corrector: Corrector = Corrector.CAREFUL

    @property
    def key(self) -> str:
        return self.login or f"anonymous@{self.address}"


@dataclass(frozen=True)
class Posted:
    """One classification made: by whom, on what, how."""

    classification_id: int
    subject_id: int
    volunteer: str
    behaviour: Behaviour
    prolific: bool
    front_end: FrontEnd
    kind: str  # "tracing" or "correction"
    seconds: float = 0.0  # finished_at - started_at, as recorded
    corrector: Corrector | None = None  # on a correction: how this volunteer treated the outline


@dataclass
class RunReport:
    """What a run did."""

    posted: list[Posted] = field(default_factory=list)
    stop_reason: str = ""
    volunteer_counts: dict[str, int] = field(default_factory=dict)

    @property
    def classifications(self) -> int:
        return len(self.posted)

    @property
    def volunteers(self) -> int:
        return len(self.volunteer_counts)

    @property
    def gini(self) -> float:
        return gini(list(self.volunteer_counts.values()))

    def by_behaviour(self) -> Counter[str]:
        return Counter(p.behaviour.value + (" (prolific)" if p.prolific else "") for p in self.posted)

    def by_front_end(self) -> Counter[str]:
        return Counter(p.front_end.value for p in self.posted)


# --- the run -------------------------------------------------------------------------------------------


@dataclass
class _Workflow:
    workflow_id: int
    project_id: int
    version: str
    task: str
    live: bool
    caesar: bool = False  # the classifier pre-loads machineLearnt marks


class VolunteerCrowd:
    """Simulated volunteers against one sandbox: ``run`` until the options say stop."""

    def __init__(
        self,
        url: str,
        options: RunOptions,
        volumes: Mapping[str, VolumeTruth],
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        timeout_s: float = 30.0,
        caesar_url: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.caesar_url = (caesar_url or url).rstrip("/")  # the sandbox serves Caesar too
        self.options = options
        self.volumes = volumes
        self.rng = np.random.default_rng(options.seed)
        # what is drawn by hand (strokes, corrections, mark ids) depends on the subject the server served:
        # a generator of its own, so who classifies, and how, stays the seed's whatever the server serves
        self.marks_rng = np.random.default_rng([options.seed, 0x3A])
        mix = options.mix
        self.effort = EffortProcess(
            self.rng, len(mix.prolific_behaviours), mix.prolific_share, options.new_volunteer_probability
        )
        self.people: dict[int, SimVolunteer] = {}
        self.http = httpx.Client(timeout=timeout_s)
        self.sleep = sleep
        self.clock = clock
        self._truth_cache: dict[int, list[SliceTruth]] = {}
        self._last_classified: dict[int, float] = {}  # subject id -> when this crowd last classified it
        self._resting_until: float | None = None  # the last draw passed over subjects until then

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> VolunteerCrowd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, progress: Callable[[RunReport], None] | None = None) -> RunReport:
        """Classify until the options say stop. With ``subject_gap_s``, a subject is not classified again
        until that long after this crowd last classified it: a live project's crowd spreads over
        thousands of subjects, so each receives a classification minutes or hours apart, and the
        daemon has decided on it (retired it) before the next arrives. Without it, a fast simulated
        crowd swarms a small subject set between two of the daemon's checks, and every subject
        receives many more classifications than the stopping rule asked for."""
        workflow = self._workflow()
        report = RunReport()
        limit = self.options.max_classifications
        interval_s = 1.0 / self.options.rate_per_s if self.options.rate_per_s > 0 else 0.0
        next_post_s = self.clock()
        idle = 0
        while limit is None or report.classifications < limit:
            index = self.effort.next()
            person = self._person(index)
            choice = self._next_subject(workflow, person)
            if choice is None and self._resting_until is not None:
                self.sleep(max(self._resting_until - self.clock(), 0.05))  # only resting subjects were left
                continue
            if choice is None:
                self.effort.exhausted.add(index)
                idle += 1
                if self.options.until_retired and self._queue_empty(workflow):
                    report.stop_reason = "every subject is retired"
                    break
                if self.options.follow and idle >= FOLLOW_IDLE_DRAWS:
                    self.sleep(self.options.follow_poll_s)  # a live project: new subjects will come
                    self.effort.exhausted.clear()
                    idle = 0
                elif idle >= IDLE_LIMIT:
                    report.stop_reason = f"{IDLE_LIMIT} volunteers in a row found nothing new to classify"
                    break
                continue
            idle = 0
            if interval_s:
                wait_s = next_post_s - self.clock()
                if wait_s > 0:
                    self.sleep(wait_s)
                next_post_s = max(next_post_s, self.clock()) + interval_s
            posted = self._classify(workflow, person, *choice)
            self._last_classified[posted.subject_id] = self.clock()
            self.effort.record(index)
            person.classifications += 1
            report.posted.append(posted)
            report.volunteer_counts[person.key] = person.classifications
            if progress is not None:
                progress(report)
        else:
            report.stop_reason = f"reached {limit} classifications"
        return report

    # --- the server, as a browser speaks to it ---------------------------------------------------------

    def _api(self, method: str, path: str, person: SimVolunteer | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Accept": ACCEPT, **kwargs.pop("headers", {})}
        if "json" in kwargs:
            headers["Content-Type"] = "application/json"
        if person is not None:
            headers["X-Forwarded-For"] = person.address
            headers["User-Agent"] = person.browser.user_agent
            if person.token:
                headers["Authorization"] = f"Bearer {person.token}"
        try:
            response = self.http.request(method, f"{self.url}/api{path}", headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise VolunteerRunError(f"{method} {path}: {exc}") from None
        if response.status_code >= 400:
            raise VolunteerRunError(f"{method} {path}: HTTP {response.status_code} {_error_text(response)}")
        return response

    def _workflow(self) -> _Workflow:
        item = self._api("GET", f"/workflows/{self.options.workflow_id}").json()["workflows"][0]
        project_id = int(item["links"]["project"])
        project = self._api("GET", f"/projects/{project_id}").json()["projects"][0]
        task = str(item.get("first_task") or next(iter(item.get("tasks") or {"T0": {}})))
        tools = {str(t.get("type")) for t in ((item.get("tasks") or {}).get(task) or {}).get("tools") or []}
        fetching = bool((item.get("configuration") or {}).get("enable_caesar_data_fetching"))
        live = bool(project.get("live"))
        return _Workflow(
            int(item["id"]), project_id, str(item["version"]), task, live, fetching and bool(tools & CAESAR_TOOLS)
        )

    def _person(self, index: int) -> SimVolunteer:
        if index in self.people:
            return self.people[index]
        mix = self.options.mix
        prolific = index < len(mix.prolific_behaviours)
        if prolific:
            behaviour = mix.prolific_behaviours[index]
        else:
            behaviours = [b for b, share in mix.fractions.items() if share > 0]
            shares = np.array([mix.fractions[b] for b in behaviours], dtype=np.float64)
            behaviour = behaviours[int(self.rng.choice(len(behaviours), p=shares / shares.sum()))]
        logged_in = prolific or self.rng.random() < mix.logged_in_fraction
        login = f"sim{self.options.seed}-{index:05d}" if logged_in else None
        volunteer = make_volunteer(login or f"not-logged-in-{index}", behaviour, self.rng, prolific=prolific)
        person = SimVolunteer(
            volunteer=volunteer,
            front_end=FrontEnd.FEM if self.rng.random() < self.options.fem_fraction else FrontEnd.PFE,
            browser=random_browser(self.rng),
            address=f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}",
            session=self.rng.bytes(32).hex(),
            login=login,
            # from a generator of its own: the crowd's other choices stay as they were for a seed
            corrector=self.options.correctors.draw(np.random.default_rng([self.options.seed, index, 0xC0])),
        )
        if login is not None:
            person.token = self._sign_in(login)
        self.people[index] = person
        return person

    def _sign_in(self, login: str) -> str:
        """The sign-in page, the JSON sign-in and the password grant, with the session's cookies."""
        password = self.options.password
        created = self.http.post(f"{self.url}/_sandbox/users", json={"login": login, "password": password})
        if created.status_code not in (200, 422):  # 422: the volunteer is back from an earlier run
            raise VolunteerRunError(f"cannot create volunteer {login}: HTTP {created.status_code}")
        with httpx.Client(base_url=self.url, timeout=self.http.timeout) as browser:
            headers = {"Accept": "application/json", "Content-Type": "application/json"}
            form = browser.get("/users/sign_in", headers=headers)
            csrf = form.headers.get("x-csrf-token", "")
            body = {"authenticity_token": csrf, "user": {"login": login, "password": password, "remember_me": True}}
            signed = browser.post("/users/sign_in", headers=headers, json=body)
            if signed.status_code != 200:
                raise VolunteerRunError(f"volunteer {login} cannot sign in: HTTP {signed.status_code}")
            grant = {"grant_type": "password", "client_id": PANOPTES_CLIENT_DEFAULT_ID}
            token = browser.post("/oauth/token", data=grant)
            if token.status_code != 200 or "access_token" not in token.json():
                raise VolunteerRunError(f"volunteer {login} got no token: HTTP {token.status_code}")
            return str(token.json()["access_token"])

    def _queued(self, workflow: _Workflow, person: SimVolunteer | None) -> list[dict[str, Any]]:
        """The subjects Panoptes would serve next. A workflow with no subject set yet answers 404: when
        following a live project that means "nothing yet" (its first set is still to come)."""
        params = {"workflow_id": workflow.workflow_id, "page_size": self.options.page_size}
        try:
            response = self._api("GET", "/subjects/queued", person, params=params)
        except VolunteerRunError as exc:
            if self.options.follow and "HTTP 404" in str(exc):
                return []
            raise
        items: list[dict[str, Any]] = response.json()["subjects"]
        return items

    def _next_subject(self, workflow: _Workflow, person: SimVolunteer) -> tuple[dict[str, Any], Selection] | None:
        """The first queued subject the volunteer has not seen and that is not resting (classified by this
        crowd less than ``subject_gap_s`` ago); None when there is none, with ``_resting_until`` set
        when resting subjects were passed over."""
        self._resting_until = None
        for item in self._queued(workflow, person):
            subject_id = int(item["id"])
            fresh = not item.get("retired") and not item.get("already_seen") and subject_id not in person.seen
            if item.get("selection_state", "normal") == "normal" and fresh:
                ready_at = self._last_classified.get(subject_id, -math.inf) + self.options.subject_gap_s
                if ready_at > self.clock():
                    resting: float | None = self._resting_until
                    self._resting_until = ready_at if resting is None else min(resting, ready_at)
                    continue
                selection = Selection(
                    selected_at=str(item.get("selected_at") or ""),
                    selection_state=str(item.get("selection_state", "normal")),
                    finished_workflow=bool(item.get("finished_workflow")),
                    user_has_finished_workflow=bool(item.get("user_has_finished_workflow")),
                )
                return item, selection
        return None

    def _queue_empty(self, workflow: _Workflow) -> bool:
        """Nothing unretired is left for anyone: the queue falls back to retired subjects."""
        items = self._queued(workflow, None)
        return not items or all(i.get("selection_state") != "normal" or i.get("retired") for i in items)

    def _classify(
        self, workflow: _Workflow, person: SimVolunteer, queued: dict[str, Any], selection: Selection
    ) -> Posted:
        subject_id = int(queued["id"])
        person.seen.add(subject_id)
        subject = self._api("GET", f"/subjects/{subject_id}", person).json()["subjects"][0]
        metadata = subject.get("metadata") or {}
        images = [self._image(location) for location in _urls(subject)[:2]]
        if not images:
            raise VolunteerRunError(f"subject {subject_id} has no image")
        shape_px = (images[0].height, images[0].width)
        layout = subject_layout(subject_id, metadata)
        frames = self._truth(subject_id, metadata, shape_px)
        target = min(layout.target_frame, len(frames) - 1)
        machine = self._machine_marks(workflow, subject_id) if workflow.caesar else []
        correction = bool(machine) or str(metadata.get(KIND_KEY, "")) == PREDICTION_KIND
        front_end = FrontEnd.FEM if machine else person.front_end  # only the new front end pre-loads marks
        started_s = self.clock()
        pace = self.options.time_model.pace(self.rng)
        if machine:
            strokes, mark_ids = self._correct_in_place(person, frames, machine)
        elif correction:
            if len(images) < 2:
                raise VolunteerRunError(f"prediction subject {subject_id} has no overlay frame")
            machine = marks_from_overlay(np.asarray(images[1].convert("RGB")), frame=target)
            strokes, mark_ids = self._correct(person, frames[target], machine, target)
        else:
            strokes = trace(person.volunteer, frames, target, self.marks_rng)
            mark_ids = [None] * len(strokes)
        duration_s = self._duration_s(strokes, mark_ids, machine if correction else None, pace)
        recorded, ids = self._record(strokes, mark_ids, front_end)
        visit = Visit(
            browser=person.browser,
            front_end=front_end,
            session=person.session,
            started_at_s=started_s - duration_s,
            finished_at_s=started_s,
            workflow_version=workflow.version,
            frames=max(len(_urls(subject)), 1),
            target_frame=target,
            shape_px=shape_px,
            selection=selection,
            live_project=workflow.live,
        )
        body = {
            "classifications": {
                "annotations": api_annotations(recorded, front_end, workflow.task, ids),
                "metadata": api_metadata(visit, sorted({r.frame for r in recorded})),
                "completed": True,
                "links": {
                    "project": str(workflow.project_id),
                    "workflow": str(workflow.workflow_id),
                    "subjects": [str(subject_id)],
                },
            }
        }
        created = self._api("POST", "/classifications", person, json=body).json()["classifications"][0]
        return Posted(
            classification_id=int(created["id"]),
            subject_id=subject_id,
            volunteer=person.key,
            behaviour=person.volunteer.behaviour,
            prolific=person.volunteer.prolific,
            front_end=front_end,
            kind="correction" if correction else "tracing",
            seconds=round(duration_s, 3),
            corrector=person.corrector if correction else None,
        )

    def _duration_s(
        self,
        strokes: Sequence[SimStroke],
        mark_ids: Sequence[str | None],
        machine: Sequence[MachineMark] | None,
        pace: float,
    ) -> float:
        """The time the classification records (:mod:`etchacell_loop.simulation.timing`): its own
        strokes drawn at a hand's pace; on a correction also the machine outline read and its marks
        deleted (a kept mark keeps its id; an overlay's marks have none, so traced-over ones count
        as drawn)."""
        model = self.options.time_model
        drawn = path_length_px((s.x_px, s.y_px) for s, m in zip(strokes, mark_ids, strict=True) if m is None)
        if machine is None:
            return model.tracing_s(drawn, pace)
        kept = {m for m in mark_ids if m is not None}
        shown = path_length_px((m.x_px, m.y_px) for m in machine)
        deleted = sum(1 for m in machine if m.mark_id is not None and m.mark_id not in kept)
        return model.correcting_s(shown, drawn, deleted, pace)

    def _record(
        self, strokes: Sequence[SimStroke], mark_ids: Sequence[str | None], front_end: FrontEnd
    ) -> tuple[list[SimStroke], list[str]]:
        """Strokes as the front end keeps them; a kept machine mark is sent as it was loaded, with its
        id; new marks get one."""
        recorded: list[SimStroke] = []
        ids: list[str] = []
        for stroke, mark_id in zip(strokes, mark_ids, strict=True):
            kept = stroke if mark_id is not None else record_stroke(stroke, front_end)
            if kept is not None:
                recorded.append(kept)
                ids.append(mark_id or new_mark_id(self.marks_rng))
        return recorded, ids

    def _correct(
        self, person: SimVolunteer, truth: SliceTruth, machine: Sequence[MachineMark], frame: int
    ) -> tuple[list[SimStroke], list[str | None]]:
        """The overlay's outline (read back from frame 1) judged against the slice's truth."""
        submitted = correct_marks(
            machine, truth, person.volunteer, self.marks_rng, frame=frame, corrector=person.corrector
        )
        return _strokes_and_ids(submitted)

    def _correct_in_place(
        self, person: SimVolunteer, frames: Sequence[SliceTruth], machine: Sequence[MachineMark]
    ) -> tuple[list[SimStroke], list[str | None]]:
        """Pre-loaded marks judged frame by frame against that frame's truth."""
        strokes: list[SimStroke] = []
        mark_ids: list[str | None] = []
        for frame in sorted({m.frame for m in machine}):
            truth = frames[min(frame, len(frames) - 1)]
            on_frame = [m for m in machine if m.frame == frame]
            judged = correct_marks(
                on_frame, truth, person.volunteer, self.marks_rng, frame=frame, corrector=person.corrector
            )
            for submitted in judged:
                strokes.append(submitted.stroke)
                mark_ids.append(submitted.mark_id)
        return strokes, mark_ids

    def _machine_marks(self, workflow: _Workflow, subject_id: int) -> list[MachineMark]:
        """The subject's machineLearnt marks, asked of Caesar as the new front end asks (GraphQL, anonymous)."""
        reductions = f'subject_reductions(subjectId: {subject_id}, reducerKey:"{MACHINE_LEARNT_KEY}") {{ data }}'
        query = f"{{ workflow(id: {workflow.workflow_id}) {{ {reductions} }} }}"
        try:
            response = self.http.post(f"{self.caesar_url}/graphql", json={"query": query})
        except httpx.HTTPError as exc:
            raise VolunteerRunError(f"POST /graphql: {exc}") from None
        if response.status_code != 200:
            raise VolunteerRunError(f"POST /graphql: HTTP {response.status_code} {response.text[:200]}")
        found = ((response.json().get("data") or {}).get("workflow") or {}).get("subject_reductions") or []
        return [mark for reduction in found for mark in _machine_marks_of(reduction, workflow.task)]

    def _image(self, url: str) -> Image.Image:
        try:
            response = self.http.get(url)
        except httpx.HTTPError as exc:
            raise VolunteerRunError(f"GET {url}: {exc}") from None
        if response.status_code != 200:
            raise VolunteerRunError(f"GET {url}: HTTP {response.status_code}")
        image = Image.open(io.BytesIO(response.content))
        image.load()
        return image

    def _truth(self, subject_id: int, metadata: Mapping[str, Any], shape_px: tuple[int, int]) -> list[SliceTruth]:
        if subject_id not in self._truth_cache:
            try:
                crop = subject_crop(metadata)
            except TruthError as exc:
                raise VolunteerRunError(f"subject {subject_id}: {exc}") from None
            volume = self.volumes.get(crop.volume)
            if volume is None:
                known = ", ".join(sorted(self.volumes)) or "none"
                raise VolunteerRunError(
                    f"subject {subject_id} shows volume {crop.volume!r}; pass its truth (known: {known})"
                )
            try:
                self._truth_cache[subject_id] = subject_truth(volume, crop, shape_px)
            except TruthError as exc:
                raise VolunteerRunError(f"subject {subject_id}: {exc}") from None
            if len(self._truth_cache) > 64:
                self._truth_cache.pop(next(iter(self._truth_cache)))
        return self._truth_cache[subject_id]


def _machine_marks_of(reduction: Mapping[str, Any], task: str) -> list[MachineMark]:
    """The drawable marks of one reduction (``data.data``), as the classifier creates them: lines of
    the drawing task with matching coordinate lists; anything else is skipped."""
    marks: list[MachineMark] = []
    data = reduction.get("data") if isinstance(reduction, Mapping) else None
    for raw in (data.get("data") if isinstance(data, Mapping) else None) or []:
        if not isinstance(raw, Mapping) or str(raw.get("taskKey", task)) != task:
            continue
        try:
            x = np.asarray(raw.get("pathX"), dtype=np.float64)
            y = np.asarray(raw.get("pathY"), dtype=np.float64)
            frame = int(raw.get("frame", 0))
        except (TypeError, ValueError):
            continue
        if x.ndim == 1 and x.shape == y.shape and x.size >= 2:
            mark_id = raw.get("markId")
            marks.append(MachineMark(str(mark_id) if mark_id else None, frame, x, y))
    return marks


def _strokes_and_ids(submitted: Sequence[SubmittedMark]) -> tuple[list[SimStroke], list[str | None]]:
    return [m.stroke for m in submitted], [m.mark_id for m in submitted]


def _urls(subject: Mapping[str, Any]) -> list[str]:
    return [str(next(iter(location.values()))) for location in subject.get("locations") or []]


def _error_text(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        return "; ".join(str(e.get("message", "")) for e in errors) or response.text[:200]
    except ValueError:
        return response.text[:200]


def volumes_by_name(paths: Sequence[Path]) -> dict[str, VolumeTruth]:
    """Truth volumes keyed by the name subjects give them (their stem)."""
    volumes: dict[str, VolumeTruth] = {}
    for path in paths:
        volume = open_volume_truth(path)
        volumes[volume.name] = volume
    return volumes
