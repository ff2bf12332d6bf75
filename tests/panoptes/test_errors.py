"""Error messages: one line, and nothing secret in them."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from etchacell_loop.config import PanoptesSettings
from etchacell_loop.panoptes.errors import PanoptesAuthError, PanoptesCredentialsMissing, without_queries
from etchacell_loop.panoptes.gateway import connect


def test_auth_error_is_one_line_and_names_the_client_id() -> None:
    error = PanoptesAuthError("loop-app", "Client authentication failed\n  due to unknown client.")
    assert str(error) == (
        "Panoptes rejected the client credentials for client id loop-app: "
        "Client authentication failed due to unknown client."
    )
    assert str(PanoptesAuthError(None, "")).endswith("client id (none): no reason given")


def test_signed_url_queries_are_dropped_from_messages() -> None:
    text = "Invalid URL 'https://blob.example/subject_location/a.jpeg?sv=2018&sig=SECRET': bad"
    assert without_queries(text) == "Invalid URL 'https://blob.example/subject_location/a.jpeg?...': bad"


def test_connecting_without_a_client_id_names_the_setting_not_a_refusal() -> None:
    """Nothing is sent without credentials (the endpoint is unreachable): the error says what to set."""
    unreachable = "http://127.0.0.1:9"
    with pytest.raises(PanoptesCredentialsMissing) as no_id:
        connect(PanoptesSettings(endpoint=unreachable, client_secret=SecretStr("s3cret")))
    assert str(no_id.value) == (
        "cannot sign in to Panoptes: no client id: set ETCHACELL_PANOPTES__CLIENT_ID "
        "(or panoptes.client_id in etchacell.toml)"
    )
    assert isinstance(no_id.value, PanoptesAuthError)  # still a credentials problem a person must fix
    with pytest.raises(PanoptesCredentialsMissing) as no_secret:
        connect(PanoptesSettings(endpoint=unreachable, client_id="loop-app"))
    message = str(no_secret.value)
    assert "no client secret for client id loop-app" in message and "ETCHACELL_PANOPTES__CLIENT_SECRET" in message
    assert "rejected" not in message and "rejected" not in str(no_id.value)
