"""Waiting completions hold no API thread: /healthz answers while 45 of them wait (#8)."""

import asyncio
import subprocess
import time

import httpx
import pytest

from tests.e2e.conftest import GPT2FT, Service, free_port, wait_until

pytestmark = pytest.mark.e2e
WAITING = 45  # more than AnyIO's 40 threadpool threads: a thread each would starve the API
TIMEOUT = 8  # how long this API process waits for an inference worker


def start_api(service: Service) -> str:
    """Another `gpt2ft api` over the same home: 45 requests of one key may wait at once."""
    port = free_port()
    env = {
        **service.env,
        "GPT2FT_COMPLETION_TIMEOUT_SECONDS": str(TIMEOUT),
        "GPT2FT_MAX_INFLIGHT_INFERENCE_PER_OWNER": str(WAITING + 5),
    }
    service.processes["api-waits"] = subprocess.Popen(
        [GPT2FT, "api", "--port", str(port)],
        env=env,
        stdout=(service.logs / "api-waits.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, url)
    return url


async def healthz_while_waiting(url: str, key: str) -> tuple[list[float], int, list[int]]:
    """(healthz seconds, completions still waiting after the probes, their final statuses)."""
    body = {"model": "gpt2-tiny", "prompt": "Once", "max_tokens": 4}
    limits = httpx.Limits(max_connections=WAITING + 5)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=TIMEOUT + 60) as client:
        waiting = [
            asyncio.create_task(client.post(f"{url}/v1/completions", json=body))
            for _ in range(WAITING)
        ]
        await asyncio.sleep(2)  # all sent and waiting for a worker
        seconds = []
        async with httpx.AsyncClient(timeout=TIMEOUT + 60) as probe:
            for _ in range(20):
                start = time.monotonic()
                assert (await probe.get(f"{url}/healthz")).json()["status"] == "ok"
                seconds.append(time.monotonic() - start)
                await asyncio.sleep(0.05)
        still_waiting = sum(not task.done() for task in waiting)
        statuses = [response.status_code for response in await asyncio.gather(*waiting)]
    return seconds, still_waiting, statuses


def test_healthz_answers_while_completions_wait(service: Service) -> None:
    service.stop("worker")  # nobody answers: every completion waits its whole timeout
    url = start_api(service)
    seconds, still_waiting, statuses = asyncio.run(healthz_while_waiting(url, service.api_key))
    # Generous: on a loaded 2-core machine a probe takes milliseconds; before this fix each one
    # queued behind the waiting requests' threads for their whole timeout.
    assert max(seconds) < 2.0, seconds
    assert still_waiting == WAITING  # the probes ran while every completion was waiting
    assert statuses == [503] * WAITING  # each waited its timeout, then said no worker answered
    # With a worker back, the same API answers a completion (the awaited result arrives).
    service.start_worker()
    headers = {"Authorization": f"Bearer {service.api_key}"}
    body = {"model": "gpt2-tiny", "prompt": "Once upon", "max_tokens": 5, "seed": 1}
    answers: list[httpx.Response] = []

    def answered() -> bool:
        answers.append(httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=60))
        return answers[-1].status_code == 200

    wait_until(answered, 120, "a completion from the restarted worker")
    choice = answers[-1].json()["choices"][0]
    assert choice["text"] and choice["finish_reason"] in {"length", "stop"}
