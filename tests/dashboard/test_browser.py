"""End to end: the dashboard driven in a real headless Chromium (Debian's, at /usr/bin/chromium; the
project's setup installs it) through Playwright, on a real database served by uvicorn.

Screenshots of every page go to ``$ETCHACELL_SCREENSHOT_DIR`` when it is set (the docs' pictures and
the benchmark notes come from there), else into the test's temporary folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright import sync_api
from sqlalchemy.engine import Engine

from tests.dashboard.support import TOKEN, count_rows, dashboard_settings, populate, serving

# read at import: every test starts with the ETCHACELL_* variables cleared (tests/conftest.py)
CHROMIUM = Path(os.environ.get("ETCHACELL_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOT_DIR = os.environ.get("ETCHACELL_SCREENSHOT_DIR")
REQUIRE_BROWSER = os.environ.get("ETCHACELL_REQUIRE_BROWSER") == "1"  # CI: a missing browser fails, never skips
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAGES = {
    "overview": "/",
    "subject-sets": "/subject-sets",
    "consensus": "/consensus",
    "models": "/models",
    "events": "/events",
}


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    if not CHROMIUM.exists():
        message = f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium when it runs as root"
        if REQUIRE_BROWSER:
            pytest.fail(message)
        pytest.skip(message)
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: sync_api.Browser) -> Iterator[sync_api.Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    dialogs: list[str] = []

    def refuse(dialog: sync_api.Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    opened.on("dialog", refuse)
    yield opened
    context.close()
    assert dialogs == [], f"a page ran a script: {dialogs}"


@pytest.fixture
def shots(tmp_path: Path, db_url: str) -> Path:
    folder = Path(SCREENSHOT_DIR) if SCREENSHOT_DIR else tmp_path / "screenshots"
    backend = "postgresql" if db_url.startswith("postgresql") else "sqlite"
    folder = folder / backend
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def visit_every_page(page: sync_api.Page, base: str, shots: Path, prefix: str) -> None:
    for name, path in PAGES.items():
        response = page.goto(base + path)
        assert response is not None and response.status == 200, f"{path}: {response and response.status}"
        assert page.locator("h1").first.is_visible()
        page.screenshot(path=str(shots / f"{prefix}-{name}.png"), full_page=True)


def test_every_page_renders_on_an_empty_database(
    page: sync_api.Page, migrated_engine: Engine, tmp_path: Path, shots: Path
) -> None:
    with serving(dashboard_settings(tmp_path / "data", public_read=True), migrated_engine) as base:
        visit_every_page(page, base, shots, "empty")
        page.goto(base + "/")
        assert page.get_by_text("the daemon has never run a job").is_visible()


def test_every_page_renders_on_a_populated_database(
    page: sync_api.Page, migrated_engine: Engine, tmp_path: Path, shots: Path
) -> None:
    populate(migrated_engine, tmp_path / "data")
    with serving(dashboard_settings(tmp_path / "data", public_read=True), migrated_engine) as base:
        visit_every_page(page, base, shots, "populated")
        page.goto(base + "/")
        assert page.locator("svg.chart rect.bar").count() > 10
        assert page.get_by_text("job publish is late").is_visible()
        page.goto(base + "/consensus")
        page.locator("table a[href^='/consensus/']").first.click()
        image = page.locator("figure.slice img")
        image.wait_for()
        assert page.evaluate("(img) => img.complete && img.naturalWidth > 0", image.element_handle())
        page.screenshot(path=str(shots / "populated-consensus-slice.png"), full_page=True)


def test_a_volunteer_name_with_html_is_shown_as_text(
    page: sync_api.Page, migrated_engine: Engine, tmp_path: Path
) -> None:
    populate(migrated_engine, tmp_path / "data")
    with serving(dashboard_settings(tmp_path / "data", public_read=True), migrated_engine) as base:
        page.goto(base + "/consensus")
        shown = page.locator("span.volunteer", has_text='<script>alert("etchacell")</script>')
        assert shown.count() >= 1 and shown.first.inner_text() == '<script>alert("etchacell")</script>'
        bold = page.locator("span.volunteer", has_text="<b>bold</b> & <i>proud</i>")
        assert bold.count() >= 1
        assert page.locator("span.volunteer b").count() == 0  # no element was made from the name
        assert page.locator("main script").count() == 0


def test_retrain_button_without_a_token_is_refused_and_with_one_queues_one_run(
    page: sync_api.Page, migrated_engine: Engine, tmp_path: Path, shots: Path
) -> None:
    populate(migrated_engine, tmp_path / "data")
    runs_before = count_rows(migrated_engine, "training_run")
    with serving(dashboard_settings(tmp_path / "data", public_read=True), migrated_engine) as base:
        page.goto(base + "/models")
        page.fill("input[name=reason]", "new corrections are in")
        page.check("input[name=force]")
        with page.expect_navigation():
            page.click("#retrain button[type=submit]")
        assert page.get_by_text("sign in with the operator token").is_visible()
        assert count_rows(migrated_engine, "training_run") == runs_before

        page.goto(base + "/login?next=/models")
        page.fill("input[name=name]", "ada")
        page.fill("input[name=token]", TOKEN)
        with page.expect_navigation():
            page.click("form.action button[type=submit]")
        assert page.url.startswith(base + "/models")
        assert page.get_by_text("operator: ada").is_visible() or page.get_by_text("ada").first.is_visible()
        page.fill("input[name=reason]", "new corrections are in")
        page.check("input[name=force]")
        with page.expect_navigation():
            page.click("#retrain button[type=submit]")
        assert "/runs/" in page.url
        assert page.locator("h1").inner_text().startswith("Training run #")
        assert page.get_by_text("waiting for a worker to claim it").is_visible()
        page.screenshot(path=str(shots / "retrain-queued-run.png"), full_page=True)
    assert count_rows(migrated_engine, "training_run") == runs_before + 1
