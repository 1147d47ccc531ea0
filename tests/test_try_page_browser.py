"""The try page in a real browser, on ``edit-processor dev``'s stack: Debian's Chromium driven by
Playwright against the tiny model, PostgreSQL, the Storage server and the Auth stand-in.

A user signs in as dev's user, uploads a picture, watches progress and previews, sees the result beside
the picture and downloads it; a second edit is canceled from the page. Chromium comes from the system
(``apt-get install chromium``; Playwright's own download is never used). Without it the test is skipped
on a developer's machine and fails in CI (``CI=true``), where ``.ci/run`` installs it.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest
from PIL import Image
from rich.console import Console

from processor.devtools.dev import DevStack, dev_stack, sample_image
from tests.conftest import wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

TIMEOUT_MS = 180_000  # a loaded machine runs the tiny model slowly; every wait has this deadline


def chromium() -> str:
    """The system's Chromium, or a skip (a failure in CI, which must run this test)."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("CI=true and no chromium: .ci/run installs Debian's chromium for this test")
    pytest.skip("no chromium on this machine (apt-get install chromium); CI runs this test")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium()
    if os.environ.get("CI"):
        from playwright.sync_api import sync_playwright
    else:
        sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as playwright:
        # --no-sandbox: CI and containers run as root, where Chromium's sandbox refuses to start;
        # --disable-dev-shm-usage: a container's small /dev/shm would crash it.
        launched = playwright.chromium.launch(
            executable_path=path, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    from tests.conftest import ADMIN_DSN

    with dev_stack(
        ADMIN_DSN,
        tmp_path_factory.mktemp("dev"),
        Console(file=io.StringIO()),
        model=(str(tiny_model_dir), "cpu"),
        # Progress and previews often, so a short edit shows several of each.
        progress_interval_seconds=0.1,
        preview_every_steps=2,
        preview_interval_seconds=0.2,
    ) as running:
        yield running


@pytest.fixture
def page(browser: Browser, stack: DevStack) -> Iterator[Page]:
    context = browser.new_context(accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    opened = context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    opened.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    opened.goto(stack.page_url)
    yield opened
    context.close()
    # No script error, and nothing the page's Content-Security-Policy refused.
    assert problems == []


DROP = """(zone, bytes) => {
  const data = new DataTransfer();
  data.items.add(new File([new Uint8Array(bytes)], "dropped.png", { type: "image/png" }));
  zone.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
}"""


def row(stack: DevStack, request_id: str) -> dict[str, Any]:
    with psycopg.connect(stack.dsn, row_factory=psycopg.rows.dict_row) as conn:
        found = conn.execute("select * from edit_requests where id = %s", (request_id,)).fetchone()
    assert found is not None
    return found


def sign_in(page: Page) -> None:
    # dev fills its user in; the page signs in with Auth's password grant (the stand-in here).
    assert page.get_by_label("Email").input_value() == "dev@example.test"
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Signed in as").wait_for()


def submit(page: Page, prompt: str, steps: int, size: int | None = None) -> str:
    page.get_by_label("Prompt").fill(prompt)
    if size is not None:
        page.get_by_label("Width").fill(str(size))
        page.get_by_label("Height").fill(str(size))
    page.get_by_text("More options").click()
    page.get_by_label("Steps").fill(str(steps))
    page.get_by_role("button", name="Run the edit").click()
    page.locator("#current-id").filter(has_text=re.compile(r"\S")).wait_for()
    return page.locator("#current-id").inner_text()


def events(page: Page) -> list[str]:
    return page.locator("#events li").all_inner_texts()


def test_sign_in_upload_watch_progress_and_see_the_result(
    page: Page, stack: DevStack, tmp_path: Path
) -> None:
    sign_in(page)
    picture = tmp_path / "photo.png"
    picture.write_bytes(sample_image())
    page.get_by_label("Pick an image, or drop one here").set_input_files(picture)
    page.locator("#picked img").wait_for()

    page.get_by_label("Output format").select_option("webp")
    request_id = submit(page, "make the sky a warm sunset", steps=30)
    # A real upload: the row names the object the page sent, in the user's folder.
    assert row(stack, request_id)["input_paths"][0].startswith(f"{stack.user}/")

    page.locator("#after[src]").wait_for()
    seen = events(page)
    progress = [int(m[1]) for line in seen if (m := re.search(r"processing (\d+)%", line))]
    assert any(0 < percent < 100 for percent in progress), seen
    assert any("preview at step" in line for line in seen), seen
    assert page.locator("#current-status").inner_text() == "Done"

    # Before and after, both loaded by the browser (the result from Storage's signed URL).
    loaded = "(img) => img.complete && img.naturalWidth > 0"
    assert page.locator("#before").evaluate(loaded) and page.locator("#after").evaluate(loaded)
    assert row(stack, request_id)["status"] == "succeeded"

    # The download link is an attachment of the result itself, in the format asked for.
    href = page.get_by_role("link", name="Download the result").get_attribute("href")
    assert href is not None
    answer = httpx.get(href, timeout=60)
    assert answer.status_code == 200 and answer.headers["content-disposition"].startswith("attachment")
    assert Image.open(io.BytesIO(answer.content)).format == "WEBP"

    # The recent list (GET /v1/edits) shows it, with its result.
    item = page.locator(f'#recent-list li[data-id="{request_id}"]')
    item.locator("img").wait_for()
    assert item.get_attribute("data-status") == "succeeded"


def test_cancel_a_running_edit_from_the_page(page: Page, stack: DevStack) -> None:
    sign_in(page)
    # A picture dropped on the drop zone is picked (and removed again: this one is a creation).
    page.locator("#drop-zone").evaluate(DROP, list(sample_image()))
    page.locator("#picked img").wait_for()
    page.get_by_role("button", name="Remove the images").click()
    assert page.locator("#picked li").count() == 0
    # No image: a creation, long enough (100 steps at 1024 × 1024) to be canceled while it runs.
    request_id = submit(page, "a lighthouse at dusk", steps=100, size=1024)
    page.locator("#current-status", has_text="Processing").wait_for()
    page.get_by_role("button", name="Cancel this edit").click()

    page.locator("#current-status", has_text="Canceled").wait_for()
    assert wait_for(lambda: row(stack, request_id)["status"] == "canceled", timeout=TIMEOUT_MS / 1000)
    assert page.get_by_role("button", name="Cancel this edit").is_hidden()
    page.locator(f'#recent-list li[data-id="{request_id}"][data-status="canceled"]').wait_for()
