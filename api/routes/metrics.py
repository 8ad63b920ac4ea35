"""A job's training curve: every logged step as JSON or CSV, and loss charts (SVG, PNG)."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from api.charts import render_png, render_svg
from api.deps import JobDep, SessionDep
from api.schemas import MetricPoint, MetricsPage
from shared.metrics_table import load_points, render_csv

router = APIRouter(prefix="/fine_tuning/jobs", tags=["fine-tuning"])


def job_points(job: JobDep, session: SessionDep) -> list[dict[str, Any]]:
    """The caller's job's metric points, oldest first (404 for anyone else's job)."""
    return load_points(session, job.id)


# The path's job, owner-checked, as its metric points.
Points = Annotated[list[dict[str, Any]], Depends(job_points)]

# Generated clients (openapi-python-client) read JSON, text/* and octet-stream bodies only:
# a chart is declared as its image type and as octet-stream, the same bytes either way.
OCTET_STREAM = "application/octet-stream"
BINARY = {"schema": {"type": "string", "format": "binary"}}


def image_responses(media_type: str) -> dict[int | str, dict[str, Any]]:
    """The 200 of a chart route: the image type first (what browsers get), then octet-stream."""
    content = {media_type: BINARY, OCTET_STREAM: BINARY}
    return {200: {"description": f"The chart ({media_type})", "content": content}}


def accept_ranges(accept: str) -> dict[str, float]:
    """An Accept header as {media range: q}; a q that is not a number counts as 0."""
    ranges: dict[str, float] = {}
    for part in accept.split(","):
        name, *params = (piece.strip() for piece in part.split(";"))
        quality = next((p[2:] for p in params if p.lower().startswith("q=")), "1")
        try:
            ranges[name.lower()] = float(quality)
        except ValueError:
            ranges[name.lower()] = 0.0
    return ranges


def accepted_quality(accept: str, media_type: str) -> float:
    """The q an Accept header gives media_type (exact, type/*, then */*); 0 when absent."""
    ranges = accept_ranges(accept)
    for candidate in (media_type, media_type.split("/")[0] + "/*", "*/*"):
        if candidate in ranges:
            return ranges[candidate]
    return 0.0


def chart_response(request: Request, body: bytes | str, media_type: str) -> Response:
    """The chart as media_type, or as octet-stream when the client prefers that (Accept)."""
    accept = request.headers.get("accept", "*/*")
    wants_bytes = accepted_quality(accept, OCTET_STREAM) > accepted_quality(accept, media_type)
    served = OCTET_STREAM if wants_bytes else media_type
    return Response(body, media_type=served, headers={"Cache-Control": "no-store"})


@router.get(
    "/{job_id}/metrics",
    response_model=MetricsPage,
    operation_id="listJobMetrics",
    summary="List a job's logged steps and evaluations",
    responses={200: {"content": {"text/csv": {}}}},
)
def list_metrics(job_id: str, points: Points, format: Literal["json", "csv"] = "json") -> Any:
    """Every logged step oldest first; format=csv gives the job's results file layout."""
    if format == "csv":
        return Response(
            render_csv(points),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{job_id}_metrics.csv"'},
        )
    return MetricsPage(data=[MetricPoint(**p) for p in points])


@router.get(
    "/{job_id}/loss.svg",
    response_class=Response,
    operation_id="readJobLossSvg",
    summary="Loss chart (SVG)",
    responses=image_responses("image/svg+xml"),
)
def read_loss_svg(job_id: str, points: Points, request: Request) -> Response:
    """Train and validation loss against step as an SVG document."""
    return chart_response(request, render_svg(points, f"{job_id} loss"), "image/svg+xml")


@router.get(
    "/{job_id}/loss.png",
    response_class=Response,
    operation_id="readJobLossPng",
    summary="Loss chart (PNG)",
    responses=image_responses("image/png"),
)
def read_loss_png(points: Points, request: Request) -> Response:
    """Train and validation loss against step as a PNG image."""
    return chart_response(request, render_png(points), "image/png")
