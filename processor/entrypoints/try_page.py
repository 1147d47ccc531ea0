"""The page to try an edit, at ``/try/``: static HTML, JavaScript and CSS shipped in the package.

The page is a client of the public API and nothing else: it signs in with Supabase Auth (or takes a
pasted access token), submits with ``POST /v1/edits``, follows with a stream token and
``EventSource``, cancels with ``DELETE`` and lists with ``GET /v1/edits``. The server only hands it
the files and, inside ``index.html``, what it cannot know by itself: where Auth is, the publishable
key, the request's bounds (from ``domain.rules``, so the form and the API agree) and, from
``edit-processor dev`` only, the development user to fill in (docs/decisions/0160-try-page.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException

from processor.domain import rules

PATH = "/try/"
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
_CONFIG_SLOT = "<!--config-->"


@dataclass(frozen=True, slots=True)
class DevUser:
    """A user whose email and password the page fills in: ``edit-processor dev``'s, never production's."""

    email: str
    password: str


@dataclass(frozen=True, slots=True)
class TryPage:
    """What the page needs from the deployment."""

    auth_url: str | None
    """Supabase Auth (``{SUPABASE_URL}/auth/v1``); None: the page asks for an access token instead."""
    anon_key: str | None
    """The publishable key Auth wants in ``apikey``; None, like ``auth_url``: no password sign-in."""
    storage_url: str | None
    """Where signed URLs point (``SUPABASE_URL``): the page shows images from there."""
    default_speed: str = rules.SPEED_PRESETS[0]
    default_format: str = rules.DEFAULT_OUTPUT_FORMAT
    max_image_bytes: int = rules.MAX_IMAGE_BYTES
    dev_user: DevUser | None = None

    def config(self) -> dict[str, Any]:
        """The page's settings, as it reads them from ``index.html``."""
        signs_in = self.auth_url is not None and self.anon_key is not None
        return {
            "api": "../v1",  # relative: the page works behind a proxy that serves it under a prefix
            "auth": {"url": self.auth_url, "anon_key": self.anon_key} if signs_in else None,
            "dev_user": {"email": self.dev_user.email, "password": self.dev_user.password}
            if self.dev_user
            else None,
            "speeds": list(rules.SPEED_PRESETS),
            "default_speed": self.default_speed,
            "formats": list(rules.OUTPUT_FORMATS),
            "default_format": self.default_format,
            "limits": {
                "max_images": rules.MAX_IMAGES,
                "max_image_bytes": self.max_image_bytes,
                "max_prompt_chars": rules.MAX_PROMPT_CHARS,
                "min_steps": rules.MIN_STEPS,
                "max_steps": rules.MAX_STEPS,
                "min_side": rules.MIN_OUTPUT_SIDE,
                "max_side": rules.MAX_OUTPUT_SIDE,
                "side_multiple": rules.SIZE_MULTIPLE,
                "max_pixels": rules.MAX_OUTPUT_PIXELS,
                "list_limit": rules.DEFAULT_LIST_LIMIT,
            },
        }

    def content_security_policy(self) -> str:
        """Scripts and styles from this origin only; images also from Storage (signed URLs) and the
        page's own picks (``blob:``); requests to this origin and to Auth; never framed."""
        images = " ".join(filter(None, ("'self' blob: data:", _origin(self.storage_url))))
        connect = " ".join(filter(None, ("'self'", _origin(self.auth_url))))
        return (
            "default-src 'none'; script-src 'self'; style-src 'self'; "
            f"img-src {images}; connect-src {connect}; "
            "form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
        )


def _origin(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def asset(name: str) -> str:
    return (files("processor.entrypoints") / "page" / name).read_text(encoding="utf-8")


def render_index(page: TryPage) -> str:
    """``index.html`` with the page's settings in its JSON block (``<`` escaped: the JSON cannot end
    the script element, whatever a setting holds)."""
    data = json.dumps(page.config()).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return asset("index.html").replace(_CONFIG_SLOT, data, 1)


def install_try_page(app: FastAPI, page: TryPage) -> None:
    """``/try/`` and its two assets, with headers that keep the page to itself."""
    index = render_index(page)
    assets = {name: asset(name) for name in ASSETS}
    headers = {
        "Content-Security-Policy": page.content_security_policy(),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        # Revalidate: a new version of the processor brings a new page.
        "Cache-Control": "no-cache",
    }

    @app.get("/try", include_in_schema=False)
    async def try_page_redirect() -> RedirectResponse:
        return RedirectResponse(PATH, status_code=308)

    @app.get(PATH, include_in_schema=False)
    async def try_page() -> Response:
        return Response(index, media_type="text/html; charset=utf-8", headers=headers)

    @app.get(PATH + "{name}", include_in_schema=False)
    async def try_page_asset(name: str) -> Response:
        if name not in assets:
            # The app's one error shape for unknown paths.
            raise HTTPException(status_code=404, detail="Not Found")
        return Response(assets[name], media_type=ASSETS[name], headers=headers)
