"""The operator token, sessions and CSRF tokens, without a server."""

from __future__ import annotations

from etchacell_loop.dashboard.security import SESSION_LIFETIME_S, OperatorGuard, clean_operator_name


def test_the_token_is_compared_exactly() -> None:
    guard = OperatorGuard("s3cret")
    assert guard.enabled and guard.token_matches("s3cret") and guard.token_matches(" s3cret\n")
    assert not guard.token_matches("s3cre") and not guard.token_matches("") and not guard.token_matches(None)
    assert not OperatorGuard(None).enabled and not OperatorGuard(None).token_matches("anything")


def test_a_session_names_its_operator_until_it_expires() -> None:
    guard = OperatorGuard("s3cret")
    cookie = guard.issue_session("Ada <admin>", now=1000.0)
    operator = guard.operator_from_cookie(cookie, now=1001.0)
    assert operator is not None and operator.name == "Ada <admin>" and operator.cookie == cookie
    assert guard.operator_from_cookie(cookie, now=1000.0 + SESSION_LIFETIME_S + 1) is None


def test_a_tampered_or_foreign_session_is_refused() -> None:
    guard = OperatorGuard("s3cret")
    cookie = guard.issue_session("ada")
    payload, _, signature = cookie.rpartition(".")
    forged = guard.issue_session("root").rpartition(".")[0] + "." + signature
    assert guard.operator_from_cookie(forged) is None
    assert guard.operator_from_cookie(payload + ".") is None
    assert guard.operator_from_cookie("garbage") is None
    assert OperatorGuard("another").operator_from_cookie(cookie) is None


def test_csrf_tokens_belong_to_one_session() -> None:
    guard = OperatorGuard("s3cret")
    ada = guard.operator_from_cookie(guard.issue_session("ada", now=1.0e12 - 10), now=1.0e12 - 5)
    bob = guard.operator_from_cookie(guard.issue_session("bob", now=1.0e12 - 10), now=1.0e12 - 5)
    assert ada is not None and bob is not None
    assert guard.csrf_valid(ada, guard.csrf_token(ada))
    assert not guard.csrf_valid(ada, guard.csrf_token(bob))
    assert not guard.csrf_valid(ada, "") and not guard.csrf_valid(ada, None)


def test_a_bearer_token_acts_without_csrf() -> None:
    guard = OperatorGuard("s3cret")
    operator = guard.operator_from_bearer("Bearer s3cret")
    assert operator is not None and operator.cookie is None and guard.csrf_valid(operator, None)
    assert guard.operator_from_bearer("Bearer nope") is None and guard.operator_from_bearer("Basic s3cret") is None


def test_operator_names_are_trimmed_to_printable_text() -> None:
    assert clean_operator_name("  ada\x00\n ") == "ada"
    assert clean_operator_name("") == "operator"
    assert len(clean_operator_name("x" * 500)) == 64
