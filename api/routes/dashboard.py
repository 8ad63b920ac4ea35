"""The browser dashboard: a static page at / that calls the /v1 API with the user's key."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from api.errors import ApiError

router = APIRouter(include_in_schema=False)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# The page's own files only: a fixed list keeps paths like ../ out of the lookup.
JS = "text/javascript; charset=utf-8"
CONTENT_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    **{
        f"{module}.js": JS
        for module in (
            "app",
            "lib",
            "chart",
            "jobs",
            "job",
            "job-form",
            "resolved",
            "playground",
            "stream",
        )
    },
}
# no-cache: browsers revalidate, so an upgraded service never runs yesterday's app.js.
HEADERS = {"Cache-Control": "no-cache"}


@router.get("/")
def read_dashboard() -> FileResponse:
    """The dashboard page; it asks for the API key itself, so it needs none."""
    return read_static("index.html")


@router.get("/static/{name}")
def read_static(name: str) -> FileResponse:
    """One of the dashboard's files (HTML, JS, CSS)."""
    if name not in CONTENT_TYPES:
        raise ApiError(
            404, f"No such dashboard file: {name}; open / for the dashboard", code="not_found"
        )
    return FileResponse(STATIC_DIR / name, media_type=CONTENT_TYPES[name], headers=HEADERS)
