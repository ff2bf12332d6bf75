"""Error messages: one line, and nothing secret in them."""

from __future__ import annotations

from etchacell_loop.panoptes.errors import PanoptesAuthError, without_queries


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
