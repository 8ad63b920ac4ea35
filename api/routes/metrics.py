"""A job's training curve: every logged step as JSON or CSV, and loss charts (SVG, PNG)."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
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
    responses={200: {"content": {"image/svg+xml": {}}}},
)
def read_loss_svg(job_id: str, points: Points) -> Response:
    """Train and validation loss against step as an SVG document."""
    svg = render_svg(points, f"{job_id} loss")
    return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})


@router.get(
    "/{job_id}/loss.png",
    response_class=Response,
    operation_id="readJobLossPng",
    summary="Loss chart (PNG)",
    responses={200: {"content": {"image/png": {}}}},
)
def read_loss_png(points: Points) -> Response:
    """Train and validation loss against step as a PNG image."""
    png = render_png(points)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
