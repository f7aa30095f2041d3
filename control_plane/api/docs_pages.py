"""``/docs/events``: docs/EVENTS.md (the events the CRM receives over Socket.IO and how) as a page
beside the API reference, rendered on the server with markdown-it-py (CommonMark + tables; raw HTML
in the Markdown is escaped, not passed through)."""

from __future__ import annotations

import html
from pathlib import Path

from aiohttp import web
from markdown_it import MarkdownIt

from control_plane import errors

EVENTS_MD = Path(__file__).resolve().parent.parent.parent / "docs" / "EVENTS.md"
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} — WhatsApp gateway</title>
<link rel="icon" href="/api/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/api/static/docs.css">
</head>
<body>
<header class="docs-nav">
  <strong>WhatsApp gateway</strong>
  <nav>
    <a href="/docs">API reference</a>
    <a href="/docs/events" aria-current="page">Events (Socket.IO)</a>
    <a href="/api/openapi.json">openapi.json</a>
    <a href="/admin">Admin panel</a>
  </nav>
</header>
<main class="prose">
{body}
</main>
</body>
</html>
"""


def render_markdown(text: str) -> str:
    """Markdown -> HTML: CommonMark with tables, raw HTML escaped."""
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def events_page(path: Path = EVENTS_MD) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise errors.NotFound(f"{path.name} is not installed with this copy", code="docs_missing") from None
    first = next((line for line in text.splitlines() if line.startswith("# ")), "# Events")
    return PAGE.format(title=html.escape(first[2:].strip()), body=render_markdown(text))


def setup(app: web.Application) -> None:
    page: str | None = None

    async def events(request: web.Request) -> web.Response:
        nonlocal page
        if page is None:
            page = events_page()
        return web.Response(text=page, content_type="text/html")

    app.router.add_get("/docs/events", events)
