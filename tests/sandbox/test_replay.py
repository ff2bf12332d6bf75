"""Every recorded Panoptes exchange, replayed against the sandbox.

``tests/fixtures/panoptes-http`` holds real HTTP exchanges between the Ruby panoptes-client and
Panoptes staging (VCR cassettes, 2016-2017; see the README there). Each recorded request is sent,
in its recorded order, to an in-process sandbox (the whole app, fault middleware included) whose
state holds the users, projects, workflows, subject sets, subjects and classifications the
cassettes name, under their recorded ids. Each answer must have

- the recorded status (equivalences: ``STATUS_EQUIVALENCES``, each justified below);
- the headers clients rely on: the JSON-API media type (``application/json`` for OAuth), an ETag
  where the recording has one, and on a 201 the ``Location`` of the created resource;
- the recorded JSON shape: the recorded top-level keys; per item every recorded key with the same
  JSON type, recursively (a recorded ``null`` accepts any type); the same items (ids); the
  recorded ``meta.<type>`` keys and types, with hrefs on the same path.

The sandbox may answer with *more* keys than were recorded: the recordings are from 2016 and the
API has grown since (``shared/reference/panoptes-api.md`` lists today's fields). It may not drop or
retype a recorded key, except the few today's API no longer sends (``DROPPED_KEYS``).

Requests are rewritten only where the recording cannot be sent as is: the host; filtered tokens
(``Bearer <ACCESS_TOKEN>`` becomes a sandbox token, a token a replayed ``/oauth/token`` answer
returned is swapped for the sandbox's); ``<CLIENT_ID>``/``<CLIENT_SECRET>`` placeholders; ids and
ETags the sandbox assigned differently when a recorded request created or read them; and the
per-cassette adjustments in ``NEEDS_TOKEN`` and ``CLIENT_NOT_GRANTED`` (justified where declared).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from etchacell_loop.sandbox import resources as res
from etchacell_loop.sandbox.app import create_app
from etchacell_loop.sandbox.config import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    PANOPTES_CLIENT_DEFAULT_ID,
)
from etchacell_loop.sandbox.faults import ASGIApp
from etchacell_loop.sandbox.store import Store

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "panoptes-http"
RECORDED_ORIGIN = "https://panoptes-staging.zooniverse.org"
SANDBOX_ORIGIN = "http://testserver"  # the in-process sandbox's address, as it echoes it in Location and URLs

# --- what the test allows, and why ---------------------------------------------------------------

# The two classification cassettes were edited by hand in the Ruby client's spec; they are not what
# staging answered: both carry the same X-Request-Id, declare `Content-Length: 0` and `text/html` yet
# hold a body, carry Doorkeeper's `WWW-Authenticate: Bearer … error="invalid_token"` (the header of a
# 401), and one holds classifications created in Oct/Nov 2017 in a cassette "recorded" in Feb 2017.
# Their requests have no Authorization header, and today's API requires a token for
# /classifications/project (reference §2.9: "classifications of projects the caller can edit";
# §1.6: 401 `You must be logged in to access this resource.`). So each is replayed twice: verbatim,
# which must be refused with that 401, and with the sandbox's token added, which must then give the
# recorded 200 and shape.
NEEDS_TOKEN = frozenset(
    {
        "Classifications___get_subject_classifications__gets_some_classifications",
        "Classifications___get_user_classifications__gets_some_classifications",
    }
)

# Staging refused this client_credentials request with an empty 422: the recorded application was
# not allowed that grant (reference §1.2: "a client app not allowed the grant gets an empty 422").
# The sandbox application in the same position is panoptes-client's public app (password grant
# only), so its id stands in for <CLIENT_ID>; with the sandbox's own application the grant would
# succeed (as the Subjects retire cassette shows).
CLIENT_NOT_GRANTED = frozenset(
    {"Me___me__with_application_auth__returns_information_about_the_owner_of_the_application"}
)


def _retired_subjects_200_is_204(method: str, path: str, recorded: int, body: str, actual: int) -> bool:
    """2016 staging answered POST …/retired_subjects 200 with an empty body; today's server answers
    204 No Content (reference §2.8: "Success ⇒ 204 No Content"). Both mean "queued, nothing to say"."""
    return method == "POST" and path.endswith("/retired_subjects") and recorded == 200 and body == "" and actual == 204


STATUS_EQUIVALENCES: tuple[Callable[[str, str, int, str, int], bool], ...] = (_retired_subjects_200_is_204,)

# Recorded keys today's API no longer sends (type, key path inside an item) -> why.
DROPPED_KEYS: dict[tuple[str, tuple[str, ...]], str] = {
    ("workflows", ("aggregation",)): "reference §2.3 lists WorkflowSerializer's attributes: no aggregation",
    ("workflows", ("nero_config",)): "reference §2.3 lists WorkflowSerializer's attributes: no nero_config",
    ("workflows", ("links", "expert_subject_sets")): "reference §2.3 lists the workflow links: no expert_subject_sets",
    ("projects", ("links", "project_contents")): (
        "reference §2.2 lists the project links (owner, project_roles, pages, organizations, media): "
        "no project_contents (ProjectSerializer can_include at panoptes 9880cb7 has none either)"
    ),
}
# Recorded keys today's API sends under another name: (type, key path) -> the new name.
# UserSerializer at panoptes 9880cb7 (the reference's source) has `subject_limit` where 2016 had
# `max_subjects` (the same number: User#subject_limit falls back to Panoptes.max_subjects).
RENAMED_KEYS: dict[tuple[str, tuple[str, ...]], str] = {("users", ("max_subjects",)): "subject_limit"}

# --- the recordings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """One recorded request and the answer staging gave."""

    cassette: str
    index: int
    method: str
    uri: str
    headers: dict[str, str]
    body: str
    status: int
    response_headers: dict[str, str]  # lower-cased names
    response_body: str

    @property
    def path(self) -> str:
        return urlsplit(self.uri).path

    @property
    def label(self) -> str:
        return f"{self.cassette}#{self.index} {self.method} {self.path}"


def load_cassette(path: Path) -> list[Recorded]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    out = []
    for index, interaction in enumerate(data["http_interactions"]):
        request, response = interaction["request"], interaction["response"]
        out.append(
            Recorded(
                cassette=path.stem,
                index=index,
                method=request["method"].upper(),
                uri=request["uri"],
                headers={name: values[0] for name, values in (request.get("headers") or {}).items()},
                body=(request.get("body") or {}).get("string") or "",
                status=int(response["status"]["code"]),
                response_headers={name.lower(): values[0] for name, values in (response.get("headers") or {}).items()},
                response_body=(response.get("body") or {}).get("string") or "",
            )
        )
    return out


CASSETTES = sorted(FIXTURES.glob("*.yml"))
INTERACTIONS = [recorded for path in CASSETTES for recorded in load_cassette(path)]

# --- the state the cassettes assume ----------------------------------------------------------------

# The recorded token's owner: /api/me answered user 1323869. The sandbox's client_credentials
# token belongs to its `sandbox` user, so that user gets this id (and owns the projects it edits).
TOKEN_USER_ID = 1323869

GHOST_SUBJECTS = {  # project 231, all in subject set 2376 ("Some ghosts", 8 members)
    3156: ("image/jpeg", {"Filename": "800px-Catrinas_2.jpg"}),
    3157: ("image/jpeg", {"Source": "Wikipedia", "Filename": "Suushi_Yurei.jpg"}),
    3158: ("image/jpeg", {"Source": "Wikipedia", "Filename": "Brown_lady.jpg"}),
    3159: ("image/jpeg", {"Source": "Wikipedia", "Filename": "800px-Catrinas_2.jpg"}),
    11932: ("image/jpeg", {"filename": "1280px-Scrooges_third_visitor-John_Leech,1843.jpg"}),
    11933: ("image/png", {"filename": "Hammersmith_Ghost.PNG"}),
    11934: ("image/jpeg", {"filename": "Suushi_Yurei.jpg"}),
    11937: ("image/jpeg", {"filename": "Suushi_Yurei.jpg"}),
}
WORKFLOW_1364_TASKS = {
    "T1": {
        "help": "",
        "type": "single",
        "answers": [{"next": "T2", "label": "Yes"}, {"label": "No"}],
        "question": "Would you like to draw something?",
        "required": True,
    },
    "T2": {"help": "", "type": "drawing", "tools": [], "instruction": "Explain what to draw."},
    "init": {"type": "single", "answers": [{"label": "Yes"}], "question": "Is this a question?"},
}


def _pfe_classification(x: float, width: float, created_at: str, client_width: int) -> dict[str, Any]:
    """A 2017 front-end classification as the user-classifications cassette shows them."""
    return {
        "annotations": [
            {"task": "T1", "value": [{"0": 0, "x": x, "tool": 0, "frame": 0, "width": width, "details": []}]}
        ],
        "metadata": {
            "session": "02d06de439a56dadbb553e95e96fcd40c44831f39e33e95c999f6e9577fd77ba",
            "viewport": {"width": 1067, "height": 1006},
            "started_at": created_at,
            "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_12_6)",
            "utc_offset": "18000",
            "finished_at": created_at,
            "live_project": False,
            "user_language": "en",
            "user_group_ids": [],
            "subject_dimensions": [
                {"clientWidth": client_width, "clientHeight": 333, "naturalWidth": 1152, "naturalHeight": 864}
            ],
        },
        "created_at": created_at,
    }


def seed_state(state_dir: Path) -> None:
    """The recorded world, under the recorded ids, built with the sandbox's own resource functions."""
    store = Store(state_dir)
    try:
        with store.transaction():
            res.create_user(store, DEFAULT_USER, DEFAULT_PASSWORD, rid=TOKEN_USER_ID)
            res.create_user(store, "mkosmala", "not-used", rid=19)
            res.create_user(store, "volunteer", "not-used", rid=1325464)

            season = res.create_project(store, 19, "Season Spotter BASIC Beta1", rid=405)
            store.update(
                season,
                {**season.data, "live": True, "private": False, "configuration": {"user_chooses_workflow": False}},
            )
            for project_id, name in ((813, "panoptes-client.rb"), (231, "Ghosts"), (1315, "Dates"), (1715, "Linking")):
                res.create_project(store, TOKEN_USER_ID, name, rid=project_id)

            untitled = res.create_workflow(
                store, 813, "Untitled workflow", WORKFLOW_1364_TASKS,
                retirement={"options": {"count": 6}, "criteria": "classification_count"}, rid=1364,
            )  # fmt: skip
            res.create_workflow(store, 1715, "Default", {}, rid=2882)
            res.create_workflow(store, 231, "Retirement", {}, rid=688)
            dates = res.create_workflow(store, 1315, "Dates", {}, rid=2218)

            for subject_id, (mime, metadata) in GHOST_SUBJECTS.items():
                res.create_subject(store, 231, TOKEN_USER_ID, [mime], metadata, rid=subject_id)
            for subject_id in (72848, 72880):
                res.create_subject(store, 1315, TOKEN_USER_ID, ["image/jpeg"], {}, rid=subject_id)

            res.create_subject_set(store, 813, "Some ghosts", {}, rid=2376)
            res.add_to_set(store, 2376, list(GHOST_SUBJECTS))
            res.link_subject_sets_to_workflow(store, untitled, [2376])
            res.create_subject_set(store, 1715, "To link", {}, rid=4398)

            for rid, subject_id, x, width, created_at, client_width in (
                (88262, 72880, 541.7737426757812, 80.36077880859375, "2017-10-02T16:17:11.623Z", 444),
                (88912, 72848, 339.3038635253906, 27.089263916015625, "2017-11-16T18:18:42.232Z", 1021),
            ):
                recorded = _pfe_classification(x, width, created_at, client_width)
                res.create_classification(
                    store, workflow=dates, subject_ids=[subject_id], annotations=recorded["annotations"],
                    metadata=recorded["metadata"], user_id=1325464, user_ip="192.0.2.1",
                    created_at=recorded["created_at"], rid=rid,
                )  # fmt: skip
    finally:
        store.close()


# --- replaying -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Replayed:
    recorded: Recorded
    target: str  # what was sent: path and query on the sandbox
    answer: Answer
    unauthenticated: Answer | None = None  # the verbatim request, for NEEDS_TOKEN cassettes
    ids: dict[str, str] = field(default_factory=dict)  # recorded id -> sandbox id, as of this answer


def _answer(response: httpx.Response) -> Answer:
    return Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)


def _rewrite_ids(text: str, ids: dict[str, str]) -> str:
    for old, new in ids.items():
        text = re.sub(rf"(?<=[/=,]){re.escape(old)}(?=$|[/?&,])", new, text)
    return text


def _document_type(document: Any) -> str | None:
    """The resource key of a JSON-API document (``subject_sets``, ``media``…), None for other JSON."""
    if not isinstance(document, dict) or not ({"links", "meta"} & document.keys()):
        return None
    return next((key for key in document if key not in ("links", "meta")), None)


def _json_or_none(body: bytes | str) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def replay_cassette(cassette: str, state_dir: Path) -> list[Replayed]:
    """Send a cassette's requests, in order, to a fresh sandbox seeded with the recorded world."""
    state_dir.mkdir(parents=True)
    seed_state(state_dir)
    app, runtime = create_app(state_dir)
    try:
        return asyncio.run(_replay(cassette, app))
    finally:
        runtime.store.close()


async def _replay(cassette: str, app: ASGIApp) -> list[Replayed]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=SANDBOX_ORIGIN) as client:
        grant = {
            "grant_type": "client_credentials",
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
        }
        tokens = {"<ACCESS_TOKEN>": (await client.post("/oauth/token", data=grant)).json()["access_token"]}
        etags: dict[str, str] = {}
        ids: dict[str, str] = {}
        out = []
        for recorded in (r for r in INTERACTIONS if r.cassette == cassette):
            parts = urlsplit(recorded.uri)
            assert f"{parts.scheme}://{parts.netloc}" == RECORDED_ORIGIN, recorded.uri
            target = _rewrite_ids(parts.path + (f"?{parts.query}" if parts.query else ""), ids)
            headers = dict(recorded.headers)
            body = recorded.body
            if recorded.path == "/oauth/token":
                client_id = PANOPTES_CLIENT_DEFAULT_ID if cassette in CLIENT_NOT_GRANTED else DEFAULT_CLIENT_ID
                # The filter left `<CLIENT_SECRET` unclosed in two cassettes.
                body = re.sub(r"<CLIENT_SECRET>?", DEFAULT_CLIENT_SECRET, body.replace("<CLIENT_ID>", client_id))
            if "Authorization" in headers:
                scheme, _, token = headers["Authorization"].partition(" ")
                headers["Authorization"] = f"{scheme} {tokens.get(token, token)}"
            if "If-Match" in headers:
                headers["If-Match"] = etags.get(headers["If-Match"], headers["If-Match"])
            content = body.encode() or None
            unauthenticated = None
            if cassette in NEEDS_TOKEN and "Authorization" not in headers:
                unauthenticated = _answer(
                    await client.request(recorded.method, target, headers=headers, content=content)
                )
                headers["Authorization"] = f"Bearer {tokens['<ACCESS_TOKEN>']}"
            answer = _answer(await client.request(recorded.method, target, headers=headers, content=content))

            recorded_json, actual_json = _json_or_none(recorded.response_body), _json_or_none(answer.body)
            if isinstance(recorded_json, dict) and isinstance(actual_json, dict) and "access_token" in recorded_json:
                tokens[recorded_json["access_token"]] = str(actual_json.get("access_token"))
            if "etag" in recorded.response_headers and "etag" in answer.headers:
                etags[recorded.response_headers["etag"]] = answer.headers["etag"]
            rtype = _document_type(recorded_json)
            if recorded.status == 201 and rtype and isinstance(actual_json, dict) and actual_json.get(rtype):
                ids[str(recorded_json[rtype][0]["id"])] = str(actual_json[rtype][0]["id"])
            out.append(Replayed(recorded, target, answer, unauthenticated, dict(ids)))
        return out


@pytest.fixture(scope="module")
def replays(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], list[Replayed]]]:
    """Each cassette replayed once (on first use), on its own fresh sandbox state."""
    done: dict[str, list[Replayed]] = {}

    def replayed(cassette: str) -> list[Replayed]:
        if cassette not in done:
            done[cassette] = replay_cassette(cassette, tmp_path_factory.mktemp("replay") / "state")
        return done[cassette]

    yield replayed


# --- comparing -------------------------------------------------------------------------------------


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def shape_problems(
    recorded: Any, actual: Any, where: str, rtype: str | None = None, keys: tuple[str, ...] = ()
) -> list[str]:
    """Every recorded key present with the recorded JSON type, recursively; a recorded null accepts
    anything; array elements are compared with the recorded element at the same index (or the last)."""
    if recorded is None:
        return []
    if json_type(recorded) != json_type(actual):
        return [f"{where}: recorded {json_type(recorded)}, sandbox {json_type(actual)} ({actual!r:.80})"]
    problems: list[str] = []
    if isinstance(recorded, dict):
        for key, value in recorded.items():
            path = (*keys, key)
            if key not in actual:
                if (rtype, path) in DROPPED_KEYS:
                    continue
                renamed = RENAMED_KEYS.get((rtype or "", path))
                if renamed is not None and renamed in actual:
                    problems += shape_problems(value, actual[renamed], f"{where}.{renamed}", rtype, (*keys, renamed))
                    continue
                problems.append(f"{where}.{key}: recorded key missing")
                continue
            problems += shape_problems(value, actual[key], f"{where}.{key}", rtype, path)
    elif isinstance(recorded, list) and recorded:
        for i, item in enumerate(actual):
            problems += shape_problems(recorded[min(i, len(recorded) - 1)], item, f"{where}[{i}]", rtype, keys)
    return problems


def document_problems(recorded: Any, actual: Any, ids: dict[str, str]) -> list[str]:
    if not isinstance(actual, dict):
        return [f"answer is {json_type(actual)}, recorded object"]
    rtype = _document_type(recorded)
    if rtype is None:  # plain JSON (an OAuth token)
        return shape_problems(recorded, actual, "$")
    problems = [f"top-level key {key!r} missing" for key in recorded if key not in actual]
    for key in recorded:
        if key in actual and key not in (rtype, "meta") and json_type(recorded[key]) != json_type(actual[key]):
            problems.append(f"top-level {key}: recorded {json_type(recorded[key])}, sandbox {json_type(actual[key])}")
    items, answered = recorded.get(rtype), actual.get(rtype)
    if not isinstance(answered, list):
        return [*problems, f"{rtype}: sandbox {json_type(answered)}, recorded array"]
    recorded_ids = [ids.get(str(item.get("id")), str(item.get("id"))) for item in items]
    answered_ids = [item.get("id") if isinstance(item, dict) else item for item in answered]
    if answered_ids != recorded_ids:
        problems.append(f"{rtype}: recorded items {recorded_ids}, sandbox {answered_ids}")
    for i, (want, got) in enumerate(zip(items, answered, strict=False)):
        problems += shape_problems(want, got, f"{rtype}[{i}]", rtype)
    if "meta" in recorded:
        want_meta = recorded["meta"].get(rtype, {})
        got_meta = (actual.get("meta") or {}).get(rtype)
        problems += shape_problems(want_meta, got_meta, f"meta.{rtype}")
        for key, value in want_meta.items():
            got = (got_meta or {}).get(key)
            if key.endswith("_href") and isinstance(value, str) and isinstance(got, str):
                if not got.startswith("/") or got.startswith("/api/"):
                    problems.append(f"meta.{rtype}.{key}: {got!r} is not relative without /api")
                elif urlsplit(got).path != urlsplit(value).path:
                    problems.append(f"meta.{rtype}.{key}: path of {got!r} differs from recorded {value!r}")
    return problems


def _media_type(content_type: str) -> tuple[str, dict[str, str]]:
    kind, *params = (part.strip() for part in content_type.split(";"))
    return kind.lower(), dict(param.partition("=")[::2] for param in params if param)


def interaction_problems(replayed: Replayed) -> list[str]:
    recorded, answer = replayed.recorded, replayed.answer
    problems: list[str] = []
    if answer.status != recorded.status and not any(
        equivalent(recorded.method, recorded.path, recorded.status, recorded.response_body, answer.status)
        for equivalent in STATUS_EQUIVALENCES
    ):
        problems.append(f"status {answer.status}, recorded {recorded.status}: {answer.body[:300]!r}")
    if replayed.unauthenticated is not None:
        refused = replayed.unauthenticated
        expected = {"errors": [{"message": "You must be logged in to access this resource."}]}
        if refused.status != 401 or _json_or_none(refused.body) != expected:
            problems.append(f"without a token: {refused.status} {refused.body[:200]!r}, expected 401 {expected}")

    if recorded.response_body:
        kind, params = _media_type(answer.headers.get("content-type", ""))
        if recorded.path.startswith("/oauth/"):
            if kind != "application/json":
                problems.append(f"Content-Type {answer.headers.get('content-type')!r}, expected application/json")
        elif kind != "application/vnd.api+json" or params.get("version") != "1":
            problems.append(
                f"Content-Type {answer.headers.get('content-type')!r}, expected application/vnd.api+json; version=1"
            )
    if "etag" in recorded.response_headers and not answer.headers.get("etag"):
        problems.append(f"no ETag; recorded {recorded.response_headers['etag']}")
    if recorded.status == 201:
        expected_location = _rewrite_ids(
            recorded.response_headers["location"].replace(RECORDED_ORIGIN, SANDBOX_ORIGIN), replayed.ids
        )
        if answer.headers.get("location") != expected_location:
            problems.append(f"Location {answer.headers.get('location')!r}, expected {expected_location!r}")

    if not recorded.response_body:
        if answer.body:
            problems.append(f"recorded an empty body, sandbox sent {answer.body[:200]!r}")
        return problems
    try:
        actual = answer.json()
    except ValueError:
        return [*problems, f"answer is not JSON: {answer.body[:200]!r}"]
    return problems + document_problems(json.loads(recorded.response_body), actual, replayed.ids)


@pytest.mark.parametrize("recorded", INTERACTIONS, ids=[r.label for r in INTERACTIONS])
def test_recorded_exchange_replays(recorded: Recorded, replays: Callable[[str], list[Replayed]]) -> None:
    replayed = replays(recorded.cassette)[recorded.index]
    problems = interaction_problems(replayed)
    assert not problems, f"{recorded.label} (sent {replayed.target}):\n  " + "\n  ".join(problems)


def test_every_cassette_is_replayed() -> None:
    """The fixtures are all there and all parse: 14 cassettes, 20 recorded requests."""
    assert len(CASSETTES) == 14
    assert len(INTERACTIONS) == 20
    assert {r.cassette for r in INTERACTIONS} == {path.stem for path in CASSETTES}


@pytest.mark.parametrize(
    ("recorded", "actual", "problem"),
    [
        ({"a": "1"}, {"a": 1}, "$.a: recorded string, sandbox number"),
        ({"a": {"b": []}}, {"a": {}}, "$.a.b: recorded key missing"),
        ({"a": [{"b": True}]}, {"a": [{"b": None}]}, "$.a[0].b: recorded boolean, sandbox null"),
    ],
)
def test_shape_comparison_catches(recorded: Any, actual: Any, problem: str) -> None:
    (found,) = shape_problems(recorded, actual, "$")
    assert found.startswith(problem)
    assert shape_problems({"a": None}, {"a": [1]}, "$") == []  # a recorded null accepts any type
    assert shape_problems({"a": 1}, {"a": 2, "extra": "x"}, "$") == []  # extra keys are allowed
