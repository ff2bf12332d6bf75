"""Page figures without HTTP: when a job counts as late, when the daemon counts as stopped, paging
bounds, durations, volunteer keys short enough for a table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from etchacell_loop.config import JobSettings, Settings
from etchacell_loop.dashboard.pages import MAX_PAGE_ROWS, humanize_seconds, job_health, page_window, short_key

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def row(job: str, minutes_ago: float, status: str = "ok") -> dict[str, object]:
    return {"job": job, "last_started_at": (NOW - timedelta(minutes=minutes_ago)).isoformat(), "last_status": status}


def test_a_job_is_late_after_late_factor_intervals() -> None:
    settings = Settings(jobs=JobSettings(ingest_interval_s=300, late_factor=3.0))
    health = {
        h.job: h
        for h in job_health([row("ingest", 14.9), row("aggregate", 16), row("retire", 1, "failed")], settings, NOW)
    }
    assert health["ingest"].state == "on time" and not health["ingest"].late
    assert health["aggregate"].late and health["aggregate"].state == "late"
    assert health["retire"].state == "failing"
    assert health["train"].state == "never run" and health["publish"].last_started_at is None
    assert list(health)[:5] == ["ingest", "aggregate", "retire", "train", "publish"]


def test_jobs_say_the_daemon_stopped_rather_than_on_time_while_it_is_silent() -> None:
    settings = Settings(jobs=JobSettings(ingest_interval_s=300, train_interval_s=900, late_factor=3.0))
    # nothing started for 20 min: past 3 periods of the quickest job, within 3 periods of train
    stopped = {h.job: h for h in job_health([row(job, 20) for job in settings.jobs.intervals()], settings, NOW)}
    assert {h.state for h in stopped.values()} == {"daemon stopped"}
    assert stopped["train"].daemon_stopped and not stopped["train"].late
    running = {h.job: h for h in job_health([row("ingest", 1), row("train", 20)], settings, NOW)}
    assert running["train"].state == "on time" and not running["train"].daemon_stopped
    assert running["publish"].state == "never run"
    assert {h.state for h in job_health([], settings, NOW)} == {"never run"}


def test_long_volunteer_keys_are_shortened_for_tables() -> None:
    session = "3f2a9c1d" + "e" * 56
    assert short_key(f"anon:{session}") == "anon:3f2a9c1d…"
    assert [short_key(k) for k in ("user:42", "anon:0a1b2c3d4e5f6a7b", "anon:classification-987654321")] == [
        "user:42",
        "anon:0a1b2c3d4e5f6a7b",
        "anon:classification-987654321",
    ]
    assert short_key(None) == ""


def test_jobs_unknown_to_the_schedule_are_still_listed() -> None:
    health = job_health([row("backfill", 600)], Settings(), NOW)
    assert health[-1].job == "backfill" and health[-1].interval_s == 0 and not health[-1].late


def test_paging_is_bounded() -> None:
    assert page_window(None, None) == (50, 0)
    assert page_window(10_000, -5) == (MAX_PAGE_ROWS, 0)
    assert page_window(0, 20) == (1, 20)


def test_durations_read_naturally() -> None:
    assert [humanize_seconds(s) for s in (5, 600, 7200, 5 * 86400)] == ["5 s", "10 min", "2.0 h", "5 d"]
