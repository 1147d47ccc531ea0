"""The try page is served by ``serve`` (and ``dev``) from the package, uses the public API only, and
keeps to itself: its settings come from the deployment and ``domain.rules``, a strict
Content-Security-Policy, and ``TRY_PAGE=false`` turns it off. The browser test drives it for real."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from processor.composition import try_page
from processor.domain import rules
from processor.entrypoints.try_page import ASSETS, TryPage, render_index
from processor.settings import load_settings
from tests.conftest import Harness

PAGE = Path(__file__).resolve().parents[1] / "processor" / "entrypoints" / "page"
ANON_KEY = "sb_publishable_test-0123456789"


def page_config(html: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="config">(.*?)</script>', html, re.S)
    assert found is not None, html
    config: dict[str, Any] = json.loads(found.group(1))
    return config


def test_serve_serves_the_page_and_its_assets_under_a_strict_policy(
    start_processor: Callable[..., Harness],
) -> None:
    harness = start_processor(rest=True, supabase_anon_key=ANON_KEY)
    url = harness.served.url
    moved = httpx.get(f"{url}/try")
    assert (moved.status_code, moved.headers["location"]) == (308, "/try/")
    page = httpx.get(f"{url}/try/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    storage = harness.storage.url
    assert "script-src 'self';" in policy and "default-src 'none'" in policy
    assert f"img-src 'self' blob: data: {storage};" in policy  # signed URLs
    assert f"connect-src 'self' {storage};" in policy  # Auth, at SUPABASE_URL/auth/v1
    assert "frame-ancestors 'none'" in policy and "unsafe" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    for name, media_type in ASSETS.items():
        asset = httpx.get(f"{url}/try/{name}")
        assert (asset.status_code, asset.headers["content-type"]) == (200, media_type)
        assert asset.text == (PAGE / name).read_text()
    missing = httpx.get(f"{url}/try/secrets.txt")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    # Not an API: the OpenAPI document leaves the page out.
    assert not any(path.startswith("/try") for path in httpx.get(f"{url}/openapi.json").json()["paths"])

    config = page_config(page.text)
    assert config["auth"] == {"url": f"{storage}/auth/v1", "anon_key": ANON_KEY}
    assert config["dev_user"] is None  # only `edit-processor dev` fills a user in
    assert config["api"] == "../v1"


def test_the_forms_bounds_are_the_rules() -> None:
    config = TryPage(None, None, None, max_image_bytes=1234).config()
    assert config["limits"] == {
        "max_images": rules.MAX_IMAGES,
        "max_image_bytes": 1234,
        "max_prompt_chars": rules.MAX_PROMPT_CHARS,
        "min_steps": rules.MIN_STEPS,
        "max_steps": rules.MAX_STEPS,
        "min_side": rules.MIN_OUTPUT_SIDE,
        "max_side": rules.MAX_OUTPUT_SIDE,
        "side_multiple": rules.SIZE_MULTIPLE,
        "max_pixels": rules.MAX_OUTPUT_PIXELS,
        "list_limit": rules.DEFAULT_LIST_LIMIT,
    }
    assert (config["speeds"], config["formats"]) == (list(rules.SPEED_PRESETS), list(rules.OUTPUT_FORMATS))


def test_the_deployments_settings_shape_the_page() -> None:
    base = {"supabase_url": "https://xyz.supabase.co", "speed": "fast", "output_format": "webp"}
    page = try_page(load_settings(**base, supabase_anon_key=ANON_KEY))
    assert page is not None and page.auth_url == "https://xyz.supabase.co/auth/v1"
    assert (page.config()["default_speed"], page.config()["default_format"]) == ("fast", "webp")
    # Without the publishable key there is no password sign-in: the page asks for an access token.
    keyless = try_page(load_settings(**base))
    assert keyless is not None and keyless.config()["auth"] is None
    assert try_page(load_settings(**base, try_page=False)) is None


def test_try_page_false_turns_it_off(start_processor: Callable[..., Harness]) -> None:
    harness = start_processor(rest=True, try_page=False)
    off = httpx.get(f"{harness.served.url}/try/")
    assert (off.status_code, off.json()["error"]["code"]) == (404, "not_found")


@pytest.mark.parametrize("hostile", ["</script><script>alert(1)</script>", "<!--", "]]>&amp;"])
def test_a_setting_cannot_end_the_config_block(hostile: str) -> None:
    html = render_index(TryPage("https://a.example/auth/v1", hostile, None))
    block = html.split('id="config">', 1)[1].split("</script>", 1)[0]
    assert "<" not in block and ">" not in block and "<script>alert" not in html
    assert page_config(html)["auth"]["anon_key"] == hostile


def test_the_page_calls_only_the_public_api(start_processor: Callable[..., Harness]) -> None:
    """Every ``call(method, path)`` in app.js is an operation of the OpenAPI document (no private
    endpoint), and Auth is reached only at its password grant."""
    harness = start_processor(rest=True)
    operations = {
        (method.upper(), re.sub(r"\{[^}]+\}", "{}", path))
        for path, item in httpx.get(f"{harness.served.url}/openapi.json").json()["paths"].items()
        for method in item
    }
    script = (PAGE / "app.js").read_text()
    calls = re.findall(r'call\("(GET|POST|DELETE)", (?:`([^`]*)`|"([^"]*)")', script)
    used = set()
    for method, template, plain in calls:
        path = "/v1/" + re.sub(r"\$\{[^}]+\}", "{}", template or plain).split("?")[0]
        used.add((method, path))
    assert used == {
        ("POST", "/v1/edits"),
        ("GET", "/v1/edits"),
        ("GET", "/v1/edits/{}"),
        ("DELETE", "/v1/edits/{}"),
        ("POST", "/v1/edits/{}/stream-token"),
    }
    assert used <= operations
    # The next page comes from the API's own Link header; the stream from its events_url.
    assert "more && next ? next" in script and "new EventSource(data.events_url)" in script
    assert (
        script.count("fetch(") == 2 and "fetch(url, {" in script and "fetch(new URL(path, api), {" in script
    )
    assert "/token?grant_type=password" in script


def test_every_control_has_a_label_and_every_section_a_heading() -> None:
    """Accessible markup: each input, select and textarea is named by a ``<label for>``, each region by
    its heading, and live updates are announced (``role=status``/``alert``)."""
    html = (PAGE / "index.html").read_text()
    controls = set(re.findall(r"<(?:input|select|textarea)[^>]*\bid=\"([^\"]+)\"", html))
    labels = set(re.findall(r'<label for="([^"]+)"', html))
    assert controls and controls <= labels, controls - labels
    for section in re.findall(r'<section id="[^"]+" aria-labelledby="([^"]+)"', html):
        assert re.search(rf'<h2 id="{section}">', html), section
    assert 'role="status" aria-live="polite"' in html and 'role="alert"' in html
    assert '<html lang="en">' in html and "<main" in html
