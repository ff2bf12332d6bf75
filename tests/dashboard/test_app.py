"""The dashboard over HTTP, on a real database (SQLite and PostgreSQL): every page on an empty and on
a populated database, who may read, who may act, CSRF, and what an action does to the database."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from etchacell_loop.db.models import (
    Event,
    JobRun,
    JobStatus,
    ModelVersion,
    RunStatus,
    TrainingRun,
    TrainingTrigger,
    VolunteerAgreement,
)
from etchacell_loop.db.types import utcnow
from etchacell_loop.simulation.ops_history import UNSAFE_NAMES
from tests.dashboard.support import TOKEN, count_rows, dashboard_settings, populate, serving

PAGES = ["/", "/subject-sets", "/consensus", "/consensus?flagged_only=true", "/models", "/events"]
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@contextmanager
def client_for(
    engine: Engine, data_dir: Path, token: str | None = TOKEN, public_read: bool = False
) -> Iterator[httpx.Client]:
    """A plain HTTP client of the dashboard, served by uvicorn on a local port (redirects not followed)."""
    with (
        serving(dashboard_settings(data_dir, token, public_read), engine) as base,
        httpx.Client(base_url=base) as client,
    ):
        yield client


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def populated(migrated_engine: Engine, data_dir: Path) -> Engine:
    populate(migrated_engine, data_dir)
    return migrated_engine


@pytest.fixture
def reader(populated: Engine, data_dir: Path) -> Iterator[httpx.Client]:
    """Anyone may read; acting needs the token."""
    with client_for(populated, data_dir, public_read=True) as client:
        yield client


def sign_in(client: httpx.Client, name: str = "ada") -> str:
    """Sign in with the token; the CSRF token of the new session."""
    response = client.post("/login", data={"token": TOKEN, "name": name, "next": "/models"})
    assert response.status_code == 303 and response.headers["location"].startswith("/models")
    page = client.get("/models")
    match = CSRF.search(page.text)
    assert match, "a signed-in page carries the CSRF token in its forms"
    return match.group(1)


def manual_runs(engine: Engine) -> list[TrainingRun]:
    with Session(engine) as session:
        return list(session.exec(select(TrainingRun).where(TrainingRun.trigger == TrainingTrigger.MANUAL)))


# --- pages -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
def test_pages_render_on_an_empty_database(migrated_engine: Engine, data_dir: Path, path: str) -> None:
    with client_for(migrated_engine, data_dir, public_read=True) as client:
        response = client.get(path)
    assert response.status_code == 200, response.text
    assert "<h1>" in response.text


def test_empty_database_says_what_is_missing(migrated_engine: Engine, data_dir: Path) -> None:
    with client_for(migrated_engine, data_dir, public_read=True) as client:
        overview = client.get("/").text
        models = client.get("/models").text
    assert "the daemon has never run a job" in overview
    assert "no workflows registered yet" in overview
    assert "no model versions yet" in models and "no data yet" in models


@pytest.mark.parametrize("path", PAGES)
def test_pages_render_on_a_populated_database(reader: httpx.Client, path: str) -> None:
    response = reader.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert "<svg" in response.text or path.startswith(("/consensus", "/events"))


def test_overview_shows_figures_and_late_jobs(reader: httpx.Client, populated: Engine) -> None:
    text = reader.get("/").text
    assert "job publish is late" in text  # the history's publish job went silent 12 h ago
    assert "Trace the nuclear envelope" in text
    assert re.search(r'<span class="figure">0\.\d\d</span><span>Gini', text)
    assert f'Training run <a href="/runs/{count_rows(populated, "training_run")}">' in text


def test_overview_jobs_say_the_daemon_stopped(migrated_engine: Engine, data_dir: Path) -> None:
    long_ago = utcnow() - timedelta(minutes=20)  # past 3 periods of ingest (5 min), within 3 of train (15 min)
    with Session(migrated_engine) as session:
        for job in ("ingest", "aggregate", "retire", "train", "publish"):
            session.add(JobRun(job=job, status=JobStatus.OK, started_at=long_ago, finished_at=long_ago))
        session.commit()
    with client_for(migrated_engine, data_dir, public_read=True) as client:
        text = client.get("/").text
    jobs = text.split("<h2>Daemon jobs</h2>", 1)[1].split("</table>", 1)[0]
    assert "the daemon has not run any job lately" in text
    assert jobs.count("<strong>daemon stopped</strong>") == 5 and "on time" not in jobs
    assert jobs.count('<tr class="bad">') == 5


def test_subject_sets_compare_with_the_fixed_limit(reader: httpx.Client) -> None:
    text = reader.get("/subject-sets").text
    assert "against a fixed limit of 30" in text
    mean = re.search(r"<strong>([\d.]+)</strong> classifications each on average", text)
    assert mean and 0 < float(mean.group(1)) < 60
    assert 'class="marker"' in text
    # the last column holds a total per set: its label says so
    assert "classifications saved in all (against 30 per subject)</th>" in text
    assert "saved against 30 each" not in text


def test_a_long_anonymous_key_is_shortened_on_the_slice_page(reader: httpx.Client, populated: Engine) -> None:
    key = "anon:" + "3f2a9c1d" + "e" * 56  # an anonymous session's 64-character hash
    with Session(populated) as session:
        agreement = session.exec(select(VolunteerAgreement).order_by(col(VolunteerAgreement.id))).first()
        assert agreement is not None
        agreement.volunteer_key = key
        session.add(agreement)
        session.commit()
        consensus_id = agreement.consensus_result_id
    page = reader.get(f"/consensus/{consensus_id}").text
    assert f'title="{key}">anon:3f2a9c1d…</span>' in page
    assert f">{key}<" not in page


def test_consensus_slice_and_its_overlay(reader: httpx.Client, populated: Engine) -> None:
    listing = reader.get("/consensus").text
    first = re.search(r'href="/consensus/(\d+)"', listing)
    assert first
    page = reader.get(f"/consensus/{first.group(1)}")
    assert page.status_code == 200 and "Drawers' agreement" in page.text
    image = reader.get(f"/consensus/{first.group(1)}/overlay.png?layers=frame,outline")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")
    assert reader.get("/consensus/999999").status_code == 404


def test_run_page_shows_progress_and_reloads_while_active(reader: httpx.Client, populated: Engine) -> None:
    with Session(populated) as session:
        running = session.exec(select(TrainingRun).where(TrainingRun.status == RunStatus.RUNNING)).one()
    page = reader.get(f"/runs/{running.id}")
    assert page.status_code == 200
    assert '<meta http-equiv="refresh" content="5">' in page.text
    assert re.search(r"<progress max=\"1\" value=\"0\.38", page.text)  # epoch 23 of 60
    as_json = reader.get(f"/runs/{running.id}", headers={"Accept": "application/json"}).json()
    assert as_json["status"] == "running" and as_json["progress"]["epoch"] == 23


def test_events_filter_and_page(reader: httpx.Client) -> None:
    warnings = reader.get("/events?level=warning&since=-60d").text
    levels = re.findall(r'<tr class="level-(\w+)">', warnings)
    assert levels and set(levels) == {"warning"}
    first = reader.get("/events?since=-60d").text
    second = reader.get("/events?since=-60d&skip=100").text
    assert "older →" in first and "← newer" in second
    assert re.findall(r"<td>(\d{4}-[^<]+)</td>", first)[:1] != re.findall(r"<td>(\d{4}-[^<]+)</td>", second)[:1]
    assert reader.get("/events?since=yesterday").status_code == 400


def test_volunteer_names_are_text_not_markup(reader: httpx.Client) -> None:
    """A user name is volunteer input: it must arrive escaped wherever it is shown."""
    pages = reader.get("/consensus").text + reader.get("/events?since=-60d").text
    for name in UNSAFE_NAMES:
        assert name not in pages
    assert "&lt;script&gt;alert(&#34;etchacell&#34;)&lt;/script&gt;" in pages
    assert "<script" not in pages


# --- who may read ------------------------------------------------------------------------------------


def test_private_pages_send_strangers_to_sign_in(populated: Engine, data_dir: Path) -> None:
    with client_for(populated, data_dir) as client:
        response = client.get("/models?x=1")
        assert response.status_code == 303 and response.headers["location"] == "/login?next=/models%3Fx%3D1"
        assert client.get("/consensus/1/overlay.png").status_code == 303
        sign_in(client)
        assert client.get("/models").status_code == 200


def test_without_token_or_public_reading_the_dashboard_is_closed(populated: Engine, data_dir: Path) -> None:
    with client_for(populated, data_dir, token=None) as client:
        response = client.get("/")
        assert response.status_code == 403 and "This dashboard is closed" in response.text
        assert client.post("/login", data={"token": ""}).status_code == 403


def test_a_wrong_token_does_not_sign_in(populated: Engine, data_dir: Path) -> None:
    with client_for(populated, data_dir) as client:
        response = client.post("/login", data={"token": TOKEN + "x", "next": "/"})
        assert response.status_code == 403 and "not the operator token" in response.text
        assert "etchacell_session" not in response.cookies
        assert client.get("/").status_code == 303


def test_sign_in_never_redirects_off_site(populated: Engine, data_dir: Path) -> None:
    with client_for(populated, data_dir) as client:
        for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
            response = client.post("/login", data={"token": TOKEN, "next": target})
            assert response.headers["location"].startswith("/?done=")


def test_a_session_signed_with_another_token_is_not_accepted(populated: Engine, data_dir: Path) -> None:
    with client_for(populated, data_dir) as first:
        sign_in(first)
        cookie = first.cookies["etchacell_session"]
    with client_for(populated, data_dir, token="a-new-token") as second:
        second.cookies.set("etchacell_session", cookie, domain="127.0.0.1")
        assert second.get("/").status_code == 303


# --- who may act ---------------------------------------------------------------------------------------


def test_retrain_without_a_token_is_refused(reader: httpx.Client, populated: Engine) -> None:
    before = count_rows(populated, "training_run")
    response = reader.post("/actions/retrain", data={"reason": "try", "csrf": "made-up"})
    assert response.status_code == 403 and "sign in with the operator token" in response.text
    bearer = reader.post("/actions/retrain", data={"reason": "try"}, headers={"Authorization": "Bearer wrong"})
    assert bearer.status_code == 403
    assert count_rows(populated, "training_run") == before


def test_retrain_with_the_token_queues_exactly_one_run(reader: httpx.Client, populated: Engine) -> None:
    csrf = sign_in(reader, name="ada")
    response = reader.post(
        "/actions/retrain", data={"reason": "volunteers fixed <b>cell 7</b>", "force": "true", "csrf": csrf}
    )
    assert response.status_code == 303
    run_id = int(response.headers["location"].rsplit("/", 1)[1])
    runs = manual_runs(populated)
    queued = [r for r in runs if r.id == run_id]
    assert len(queued) == 1 and queued[0].status is RunStatus.QUEUED
    assert queued[0].requested_by == "ada (dashboard)" and queued[0].reason == "volunteers fixed <b>cell 7</b>"
    page = reader.get(f"/runs/{run_id}").text
    assert "waiting for a worker to claim it" in page and "volunteers fixed &lt;b&gt;cell 7&lt;/b&gt;" in page
    # a second press while that run is queued is refused, as `etchacell retrain` refuses it
    again = reader.post("/actions/retrain", data={"reason": "again", "csrf": csrf})
    assert again.status_code == 409 and re.search(r"training run \d+ is already (queued|running)", again.text)
    assert len(manual_runs(populated)) == len(runs)


def test_retrain_needs_the_csrf_token_of_the_session(reader: httpx.Client, populated: Engine) -> None:
    sign_in(reader)
    before = count_rows(populated, "training_run")
    for data in ({"reason": "r", "force": "true"}, {"reason": "r", "force": "true", "csrf": "forged"}):
        response = reader.post("/actions/retrain", data=data)
        assert response.status_code == 403 and "CSRF" in response.text
    assert count_rows(populated, "training_run") == before


def test_retrain_refuses_a_missing_reason_and_an_unknown_preset(reader: httpx.Client, populated: Engine) -> None:
    csrf = sign_in(reader)
    before = count_rows(populated, "training_run")
    assert reader.post("/actions/retrain", data={"reason": " ", "force": "true", "csrf": csrf}).status_code == 400
    unknown = reader.post("/actions/retrain", data={"reason": "r", "preset": "huge", "force": "true", "csrf": csrf})
    assert unknown.status_code == 400
    assert count_rows(populated, "training_run") == before


def test_scripts_retrain_with_a_bearer_token(reader: httpx.Client, populated: Engine) -> None:
    response = reader.post(
        "/actions/retrain",
        data={"reason": "nightly", "force": "true"},
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"},
    )
    assert response.status_code == 201
    assert [r.requested_by for r in manual_runs(populated) if r.id == response.json()["run_id"]] == ["api (dashboard)"]


def test_actions_are_disabled_without_an_operator_token(populated: Engine, data_dir: Path) -> None:
    with client_for(populated, data_dir, token=None, public_read=True) as client:
        assert "Actions are disabled" in client.get("/models").text
        response = client.post("/actions/retrain", data={"reason": "r"})
        assert response.status_code == 403 and "no operator token is configured" in response.text


def test_promote_and_roll_back(reader: httpx.Client, populated: Engine) -> None:
    csrf = sign_in(reader, name="grace")
    with Session(populated) as session:
        versions = list(session.exec(select(ModelVersion).order_by(ModelVersion.id)))  # type: ignore[arg-type]
    oldest, newest = versions[0], versions[-1]
    assert newest.promoted
    response = reader.post("/actions/promote", data={"version": oldest.version, "csrf": csrf})
    assert response.status_code == 303 and response.headers["location"] == "/models?done=promoted"
    assert "The model version is promoted." in reader.get(response.headers["location"]).text
    assert promoted(populated) == oldest.version
    assert reader.post("/actions/promote", data={"version": oldest.version, "csrf": csrf}).status_code == 409
    assert reader.post("/actions/promote", data={"version": "v9999-none", "csrf": csrf}).status_code == 404
    assert reader.post("/actions/rollback", data={"csrf": csrf}).status_code == 303
    assert promoted(populated) == newest.version
    with Session(populated) as session:
        events = session.exec(select(Event).where(Event.kind == "model.promoted")).all()
    ours = [e.payload for e in events if e.payload["by"] == "grace (dashboard)"]
    assert [p["rollback"] for p in ours] == [False, True]


def promoted(engine: Engine) -> str:
    with Session(engine) as session:
        return session.exec(select(ModelVersion.version).where(ModelVersion.promoted)).one()


def test_sign_out_needs_csrf_and_ends_the_session(populated: Engine, data_dir: Path) -> None:
    with client_for(populated, data_dir) as client:
        csrf = sign_in(client)
        assert client.post("/logout", data={}).status_code == 403
        response = client.post("/logout", data={"csrf": csrf})
        assert response.status_code == 303
        assert client.get("/").status_code == 303
