"""Caesar, as the loop uses it: machine marks pushed as subject reductions, and read back.

Why beside the Panoptes gateway: Caesar signs callers in with the same Panoptes bearer token (a user
with rights on the workflow), so a :class:`CaesarGateway` borrows a
:class:`~etchacell_loop.panoptes.gateway.PanoptesGateway` for its token, and sends its requests
through the same :class:`~etchacell_loop.panoptes.http.RetryingAdapter` policy: timeouts, backoff
with jitter on connection errors, 5xx and 429. Both requests are safe to repeat (``PUT`` upserts one
reduction per workflow, reducer key, subject and subgroup), so they are retried; what Caesar still
refuses becomes :class:`~etchacell_loop.panoptes.errors.PanoptesRequestError` with one line saying
why, and a Caesar that keeps failing :class:`~etchacell_loop.panoptes.errors.PanoptesUnavailable`.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import requests

from etchacell_loop.config import PanoptesSettings
from etchacell_loop.panoptes.errors import PanoptesError, PanoptesRequestError, one_line
from etchacell_loop.panoptes.gateway import PanoptesGateway
from etchacell_loop.panoptes.http import RetryingAdapter, RetryPolicy, Sleep, mount

log = logging.getLogger(__name__)

JSON_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}
REDUCER_KEY = "machineLearnt"  # the reducer whose marks the new front end pre-loads


class CaesarGateway:
    """Subject reductions of one Caesar. Build it with :func:`connect_caesar`."""

    def __init__(self, panoptes: PanoptesGateway, endpoint: str, adapter: RetryingAdapter) -> None:
        self._panoptes = panoptes
        self.endpoint = endpoint.rstrip("/")
        self._session = requests.Session()
        mount(self._session, adapter)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> CaesarGateway:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def push_reduction(
        self,
        workflow_id: int,
        subject_id: int,
        marks: Sequence[dict[str, Any]],
        reducer_key: str = REDUCER_KEY,
        subgroup: str | None = None,
    ) -> dict[str, Any]:
        """Store ``marks`` as the subject's reduction (replacing what was there); Caesar's stored
        reduction is returned. Pushing the same marks again changes nothing."""
        path = f"/workflows/{workflow_id}/reducers/{reducer_key}/reductions"
        answer = self._request(
            "PUT", path, f"reduction of subject {subject_id}", json=_reduction_body(subject_id, marks, subgroup)
        )
        if not isinstance(answer, dict):
            raise PanoptesRequestError(f"reduction of subject {subject_id}: Caesar's answer is not a reduction")
        log.info("pushed %d %s marks for subject %d in workflow %d", len(marks), reducer_key, subject_id, workflow_id)
        return answer

    def reductions(self, workflow_id: int, subject_id: int, reducer_key: str = REDUCER_KEY) -> list[dict[str, Any]]:
        """The subject's reductions of this reducer in the workflow (one per subgroup)."""
        path = f"/workflows/{workflow_id}/reducers/{reducer_key}/reductions"
        answer = self._request("GET", path, f"reductions of subject {subject_id}", params={"subject_id": subject_id})
        if not isinstance(answer, list) or not all(isinstance(item, dict) for item in answer):
            raise PanoptesRequestError(f"reductions of subject {subject_id}: Caesar's answer is not a list")
        return answer

    def _request(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        headers = {**JSON_HEADERS, "Authorization": f"Bearer {self._panoptes.refresh_token()}"}
        try:
            response = self._session.request(method, f"{self.endpoint}{path}", headers=headers, **kwargs)
        except PanoptesError:
            raise
        except requests.RequestException as exc:
            raise PanoptesRequestError(f"{what}: {type(exc).__name__}: {one_line(str(exc))}") from exc
        with response:
            if response.status_code >= 400:
                raise PanoptesRequestError(f"{what}: Caesar said HTTP {response.status_code}: {_reason(response)}")
            try:
                return response.json()
            except ValueError:
                raise PanoptesRequestError(f"{what}: Caesar's answer is not JSON") from None


def connect_caesar(
    panoptes: PanoptesGateway,
    settings: PanoptesSettings,
    policy: RetryPolicy | None = None,
    *,
    sleep: Sleep = time.sleep,
    rng: random.Random | None = None,
) -> CaesarGateway:
    """A Caesar gateway at ``settings.caesar_endpoint``, signed in through ``panoptes``."""
    adapter = RetryingAdapter(policy or RetryPolicy.from_settings(settings), sleep=sleep, rng=rng)
    return CaesarGateway(panoptes, settings.caesar_endpoint, adapter)


def _reduction_body(subject_id: int, marks: Sequence[dict[str, Any]], subgroup: str | None) -> dict[str, Any]:
    """Caesar's ``{"reduction": {"subject_id", "data": {"data": marks}, "subgroup"?}}``; the front end
    reads the marks from ``data.data``."""
    reduction: dict[str, Any] = {"subject_id": int(subject_id), "data": {"data": list(marks)}}
    if subgroup is not None:
        reduction["subgroup"] = subgroup
    return {"reduction": reduction}


def _reason(response: requests.Response) -> str:
    """Caesar's ``error`` (or Panoptes-style ``errors[0].message``), else the start of the body."""
    try:
        payload = json.loads(response.content or b"null")
    except ValueError:
        return one_line(response.text[:200])
    if isinstance(payload, dict):
        if isinstance(payload.get("error"), str):
            return one_line(payload["error"])
        errors = payload.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return one_line(str(errors[0].get("message", "")))
    return one_line(response.text[:200])
