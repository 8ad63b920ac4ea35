"""The baseline of the bench's read_ratio: a trivial FastAPI JSON route and nothing else."""

from fastapi import FastAPI


def create_app() -> FastAPI:
    """One GET route answering a small JSON object, as FastAPI's first example does."""
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"status": "ok"}

    return app
