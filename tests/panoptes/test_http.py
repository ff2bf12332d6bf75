"""The retrying adapter under panoptes-client: timeouts, backoff, Retry-After, what is never repeated,
and the error for wrong credentials — all against the sandbox over real HTTP."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import requests
from panoptes_client import Panoptes
from panoptes_client.panoptes import PanoptesAPIException

from etchacell_loop.panoptes.errors import PanoptesAuthError, PanoptesUnavailable
from etchacell_loop.panoptes.gateway import connect
from etchacell_loop.panoptes.http import RetryingAdapter, RetryPolicy, is_repeatable, mount, parse_retry_after
from etchacell_loop.sandbox.harness import SandboxProcess, free_port
from tests.panoptes.support import FAST_POLICY, panoptes_settings


class Sleeps:
    """An injected ``sleep`` that records each wait and can run an action on the first one."""

    def __init__(self, on_first: Callable[[], object] | None = None, really_sleep: bool = False) -> None:
        self.waits: list[float] = []
        self.on_first = on_first
        self.really_sleep = really_sleep

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if len(self.waits) == 1 and self.on_first is not None:
            self.on_first()
        if self.really_sleep:
            time.sleep(seconds)


@pytest.mark.parametrize(
    ("method", "url", "repeatable"),
    [
        ("GET", "https://www.zooniverse.org/api/subjects?subject_set_id=1", True),
        ("HEAD", "https://panoptes-uploads.zooniverse.org/subject_location/x.jpeg", True),
        ("PUT", "https://blob.example/subject_location/x.jpeg?sig=abc", True),
        ("DELETE", "https://www.zooniverse.org/api/subject_sets/9/links/subjects/1,2", True),
        ("POST", "https://www.zooniverse.org/oauth/token", True),
        ("POST", "https://www.zooniverse.org/api/subject_sets/9/links/subjects", True),
        ("POST", "https://www.zooniverse.org/api/workflows/5/links/subject_sets", True),
        ("POST", "https://www.zooniverse.org/api/workflows/5/retired_subjects", True),
        ("POST", "https://www.zooniverse.org/api/projects/1/classifications_export", True),
        ("POST", "https://www.zooniverse.org/api/subjects", False),
        ("POST", "https://www.zooniverse.org/api/classifications", False),
        ("POST", "https://www.zooniverse.org/api/subject_sets", False),
        ("POST", "https://www.zooniverse.org/users/sign_in", False),
    ],
)
def test_only_requests_safe_to_repeat_are_repeated(method: str, url: str, repeatable: bool) -> None:
    assert is_repeatable(method, url) is repeatable


def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = datetime(2025, 2, 1, 10, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Sat, 01 Feb 2025 10:00:07 GMT", now=now) == 7.0
    assert parse_retry_after("Sat, 01 Feb 2025 09:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_backoff_has_full_jitter_under_a_growing_ceiling_and_honours_retry_after() -> None:
    policy = RetryPolicy(attempts=10, base_s=0.5, max_s=8.0)
    rng = random.Random(7)
    for failures in range(1, 9):
        ceiling = min(8.0, 0.5 * 2 ** (failures - 1))
        waits = [policy.delay(failures, None, rng) for _ in range(200)]
        assert all(0.0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling * 0.8  # spread over the whole range, not a fixed step
    assert policy.delay(1, 5.0, rng) == 5.0  # Retry-After wins over a shorter backoff
    assert policy.delay(1, 60.0, rng) == 8.0  # ... but never above the cap


def test_wrong_client_secret_fails_at_connect_with_a_clear_one_line_error(sandbox: SandboxProcess) -> None:
    started = time.monotonic()
    with pytest.raises(PanoptesAuthError) as caught:
        connect(panoptes_settings(sandbox, secret="not-the-secret"), FAST_POLICY)
    message = str(caught.value)
    assert time.monotonic() - started < 5
    assert message.startswith(f"Panoptes rejected the client credentials for client id {sandbox.client_id}: ")
    assert "HTTP 401" in message
    assert "not-the-secret" not in message and "\n" not in message


def test_panoptes_username_in_the_environment_is_not_used(
    sandbox: SandboxProcess, sandbox_project: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bare client signs in as $PANOPTES_USERNAME when constructed; the gateway must not."""
    monkeypatch.setenv("PANOPTES_USERNAME", "sandbox")
    monkeypatch.setenv("PANOPTES_PASSWORD", "a-wrong-password")
    with pytest.raises(PanoptesAPIException, match="Invalid email or password"):
        Panoptes(endpoint=sandbox.url)
    gateway = connect(panoptes_settings(sandbox), FAST_POLICY)
    try:
        assert gateway.client.logged_in and gateway.client.username == ""
    finally:
        gateway.close()


def test_without_the_adapter_the_client_dies_with_a_key_error(sandbox: SandboxProcess) -> None:
    """Why the adapter maps token failures: the bare client reports bad credentials as a KeyError."""
    client = Panoptes(endpoint=sandbox.url, client_id=sandbox.client_id, client_secret="not-the-secret")
    with pytest.raises(KeyError, match="access_token"):
        client.get_bearer_token()


def test_429_waits_as_long_as_retry_after_says(sandbox: SandboxProcess, sandbox_project: dict[str, int]) -> None:
    sleeps = Sleeps(on_first=sandbox.clear_faults)
    policy = RetryPolicy(attempts=3, base_s=0.001, max_s=10.0)
    with connect(panoptes_settings(sandbox), policy, sleep=sleeps) as gateway:
        sandbox.set_faults(error_rate=1.0, error_statuses=[429], retry_after_s=4, path_prefixes=["/api"])
        assert gateway.workflow_subject_set_ids(sandbox_project["segmentation_workflow_id"]) == []
    assert sleeps.waits == [4.0]


def test_retry_after_is_capped_by_the_policy(sandbox: SandboxProcess, sandbox_project: dict[str, int]) -> None:
    sleeps = Sleeps(on_first=sandbox.clear_faults)
    policy = RetryPolicy(attempts=3, base_s=0.001, max_s=0.25)
    with connect(panoptes_settings(sandbox), policy, sleep=sleeps) as gateway:
        sandbox.set_faults(error_rate=1.0, error_statuses=[429], retry_after_s=60, path_prefixes=["/api"])
        gateway.workflow_subject_set_ids(sandbox_project["segmentation_workflow_id"])
    assert sleeps.waits == [0.25]


def test_5xx_is_retried_then_reported_as_unavailable(
    sandbox: SandboxProcess, sandbox_project: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(attempts=4, base_s=0.001, max_s=0.01)
    with connect(panoptes_settings(sandbox), policy, sleep=sleeps) as gateway:
        sandbox.set_faults(error_rate=1.0, error_statuses=[503], path_prefixes=["/api"])
        caplog.set_level(logging.INFO, logger="etchacell_loop.panoptes")
        with pytest.raises(PanoptesUnavailable) as caught:
            gateway.workflow_subject_set_ids(sandbox_project["segmentation_workflow_id"])
    workflow = sandbox_project["segmentation_workflow_id"]
    assert str(caught.value) == f"GET /api/workflows/{workflow} failed: HTTP 503 after 4 attempts"
    assert len(sleeps.waits) == 3  # the client's own 5 x 5 s loop never started on top of ours
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 3 and all("HTTP 503" in m for m in retries)
    assert sandbox.client_secret not in caplog.text and "Bearer" not in caplog.text


def test_subject_creation_is_never_repeated_automatically(
    sandbox: SandboxProcess, sandbox_project: dict[str, int]
) -> None:
    """A lost answer to POST /api/subjects: the subject exists once, and the adapter did not post again."""
    sleeps = Sleeps()
    project = sandbox_project["project_id"]
    with connect(panoptes_settings(sandbox), FAST_POLICY, sleep=sleeps) as gateway:
        subject_set = gateway.ensure_subject_set(project, "no repeats")
        sandbox.set_faults(lost_response_rate=1.0, path_prefixes=["/api/subjects"])
        with pytest.raises(PanoptesUnavailable, match=r"POST /api/subjects failed: HTTP 502 after 1 attempt$"):
            gateway.create_subject(project, subject_set, [("image/jpeg", b"x")], {"#upload_key": "once"})
    assert sleeps.waits == []
    assert len(sandbox.inventory(project)["subjects"]) == 1


def test_link_posts_are_repeated_after_a_5xx(sandbox: SandboxProcess, sandbox_project: dict[str, int]) -> None:
    project = sandbox_project["project_id"]
    sleeps = Sleeps(on_first=sandbox.clear_faults)
    with connect(panoptes_settings(sandbox), FAST_POLICY, sleep=sleeps) as gateway:
        subject_set = gateway.ensure_subject_set(project, "links")
        created = gateway.create_subject(project, subject_set, [("image/jpeg", b"x")], {})
        other = gateway.ensure_subject_set(project, "links 2")
        sandbox.set_faults(error_rate=1.0, error_statuses=[502], path_prefixes=[f"/api/subject_sets/{other}/links"])
        gateway.link_subjects(other, [created.id])
    assert len(sleeps.waits) == 1
    (subject,) = sandbox.inventory(project)["subjects"]
    assert sorted(subject["subject_set_ids"]) == [subject_set, other]


def test_a_stalled_answer_times_out_and_the_retry_succeeds(
    sandbox: SandboxProcess, sandbox_project: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    sleeps = Sleeps(on_first=sandbox.clear_faults)
    policy = RetryPolicy(attempts=3, base_s=0.001, max_s=0.01, connect_timeout_s=1.0, read_timeout_s=0.5)
    workflow = sandbox_project["segmentation_workflow_id"]
    with connect(panoptes_settings(sandbox), policy, sleep=sleeps) as gateway:
        sandbox.set_faults(stall_rate=1.0, stall_s=5.0, path_prefixes=["/api/workflows"])
        caplog.set_level(logging.INFO, logger="etchacell_loop.panoptes")
        started = time.monotonic()
        assert gateway.workflow_subject_set_ids(workflow) == []
        elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 3.0  # one read timeout, not the 5 s stall (nor forever, as the bare client)
    assert len(sleeps.waits) == 1
    assert "read timeout" in caplog.text


def test_connection_errors_are_retried_then_reported(sandbox: SandboxProcess) -> None:
    sleeps = Sleeps()
    session = requests.Session()
    mount(session, RetryingAdapter(RetryPolicy(attempts=3, base_s=0.001, max_s=0.01), sleep=sleeps))
    with pytest.raises(PanoptesUnavailable, match="GET /api/projects failed: connection error after 3 attempts"):
        session.get(f"http://127.0.0.1:{free_port()}/api/projects")
    assert len(sleeps.waits) == 2
