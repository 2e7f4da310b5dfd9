"""The gateway's web page (``GET /ui``): one static HTML file with a little plain JavaScript that
calls the gateway's own API (no build step, nothing loaded from outside). Pick or create a
user, see their recommendations with reasons and A/B variant, click one (a ``click`` event is
posted) and watch the list change, add an item and see it explored."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse

PAGE = "index.html"


def page_html() -> str:
    return resources.files("recstack.serving.gateway").joinpath("static", PAGE).read_text(encoding="utf-8")


def mount_web_page(app: FastAPI) -> None:
    """Add ``GET /ui`` (the page) and ``GET /`` (a redirect to it); neither is in the OpenAPI schema."""
    html = page_html()

    @app.get("/ui", include_in_schema=False)
    async def web_page() -> HTMLResponse:
        return HTMLResponse(html)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui")
