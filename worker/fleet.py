"""This worker's devices: checked at start (fail fast), logged, and kept in the workers table."""

import logging
import re
import socket
import threading
from pathlib import Path
from typing import Any

from shared.db.session import session_scope
from shared.settings import get_settings
from shared.workers import register_worker, remove_worker, touch_worker

log = logging.getLogger(__name__)
DRIVER_VERSION = re.compile(r"Kernel Module\s+(?:for\s+\S+\s+)?([0-9][0-9.]*)")


class DeviceUnavailable(RuntimeError):
    """The worker was meant to use a GPU it cannot use; the message says why and what to do."""


def nvidia_driver_version(root: Path = Path("/")) -> str | None:
    """The loaded NVIDIA kernel driver's version, from /proc; None without one."""
    try:
        text = (root / "proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    match = DRIVER_VERSION.search(text)
    return match.group(1) if match else "unknown"


def nvidia_present(root: Path = Path("/")) -> bool:
    """Whether this host has NVIDIA GPUs: a loaded driver, or /dev/nvidia0-style devices."""
    return nvidia_driver_version(root) is not None or any((root / "dev").glob("nvidia[0-9]*"))


def check_device(requested: str, root: Path = Path("/")) -> Any:
    """The device this worker will use; DeviceUnavailable for a GPU that CUDA cannot reach.

    requested "auto" on a host with NVIDIA GPUs means a GPU: training there on the CPU
    without a word would be hundreds of times slower than the operator expects.
    """
    import torch

    from worker.training import device as device_module

    cuda = device_module.cuda
    wants_gpu = requested.startswith("cuda") or (requested == "auto" and nvidia_present(root))
    if wants_gpu and not cuda.is_available():
        driver = nvidia_driver_version(root)
        build = torch.version.cuda
        fix = (
            f"install an NVIDIA driver that supports CUDA {build} (or a torch build for this "
            "driver)"
            if build
            else "install a CUDA build of torch"
        )
        raise DeviceUnavailable(
            f"GPT2FT_DEVICE={requested} but CUDA is not usable: NVIDIA driver "
            f"{driver or 'not loaded'}, torch {torch.__version__} "
            + (f"built for CUDA {build}" if build else "built without CUDA")
            + f". To use the GPU, {fix} and check that the container sees it (NVIDIA "
            "Container Toolkit, --gpus); or set GPT2FT_DEVICE=cpu to run on the CPU on purpose"
        )
    chosen = device_module.pick_device(requested)
    if chosen.type == "cuda" and (chosen.index or 0) >= cuda.device_count():
        raise DeviceUnavailable(
            f"GPT2FT_DEVICE={requested} but only {cuda.device_count()} GPU(s) are visible; "
            "use cuda:0 to cuda:N-1, or check CUDA_VISIBLE_DEVICES"
        )
    return chosen


def host_memory_bytes(root: Path = Path("/")) -> int | None:
    """The host's RAM (MemTotal), None when /proc does not say."""
    try:
        with (root / "proc/meminfo").open() as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def offered_bytes(device_bytes: int | None) -> int | None:
    """What this worker offers a training job: the device's memory, capped by the setting."""
    cap = get_settings().worker_memory_gib
    if cap is None:
        return device_bytes
    capped = int(cap * 1024**3)
    return capped if device_bytes is None else min(capped, device_bytes)


def capacity_bytes(chosen: Any, root: Path = Path("/")) -> int | None:
    """The memory a job may plan for on chosen: its GPU's total, or the host's RAM."""
    if chosen.type == "cuda":
        from worker.training import device as device_module

        total = device_module.cuda.get_device_properties(chosen.index or 0).total_memory
        return offered_bytes(int(total))
    return offered_bytes(host_memory_bytes(root))


def device_report(chosen: Any, root: Path = Path("/")) -> dict[str, Any]:
    """What the workers table and the start-up log say about this process's device."""
    import torch

    from worker.training import device as device_module

    cuda = device_module.cuda
    report: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "device_kind": chosen.type,
        "device": str(chosen),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "driver_version": nvidia_driver_version(root),
        "device_count": 0,
        "devices": [],
        # What a job may use here (routing reads it): the host's RAM on the CPU.
        "memory_bytes": offered_bytes(host_memory_bytes(root)),
    }
    if chosen.type != "cuda":
        return report
    devices = []
    for index in range(cuda.device_count()):
        properties = cuda.get_device_properties(index)
        devices.append(
            {
                "index": index,
                "name": properties.name,
                "memory_bytes": int(properties.total_memory),
                "capability": f"{properties.major}.{properties.minor}",
                # Native bf16 from Ampere (8.0) on; older GPUs train in fp16 with a scaler.
                "bf16": properties.major >= 8,
            }
        )
    report.update(
        device_count=len(devices),
        devices=devices,
        memory_bytes=offered_bytes(devices[chosen.index or 0]["memory_bytes"]) if devices else None,
    )
    return report


def describe(report: dict[str, Any]) -> str:
    """One log line: device, its memory, CUDA and driver versions."""
    if report["device_kind"] != "cuda":
        return f"device {report['device']} (torch {report['torch_version']})"
    chosen = report["devices"][int(report["device"].partition(":")[2] or 0)]
    return (
        f"device {report['device']}: {chosen['name']}, {chosen['memory_bytes'] / 1024**3:.1f} "
        f"GiB, compute capability {chosen['capability']}; CUDA {report['cuda_version']}, "
        f"driver {report['driver_version']}, torch {report['torch_version']}; "
        f"{report['device_count']} GPU(s) visible"
    )


class WorkerBeat:
    """Registers this process in the workers table, then marks it seen every interval."""

    def __init__(self, worker_id: str, report: dict[str, Any], interval: float) -> None:
        self.worker_id, self.report, self.interval = worker_id, report, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-beat", daemon=True)

    def start(self) -> "WorkerBeat":
        """Register now (errors logged, retried by the beat) and start beating."""
        self._beat(register=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating; the row ages out of the live list on its own."""
        self._stop.set()

    def leave(self) -> None:
        """Stop beating and remove the row now (a clean shutdown); errors only logged."""
        self.stop()
        try:
            with session_scope() as session:
                remove_worker(session, self.worker_id)
        except Exception as exc:  # the DB is away: the row ages out within a lease
            log.warning("worker %s: row not removed: %s", self.worker_id, exc)

    def _beat(self, register: bool) -> None:
        try:
            with session_scope() as session:
                if register or not touch_worker(session, self.worker_id):
                    register_worker(session, self.worker_id, self.report)
        except Exception as exc:  # the DB is away: the next beat tries again
            log.warning("worker %s: heartbeat not recorded: %s", self.worker_id, exc)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat(register=False)


_BEATS: list[WorkerBeat] = []


def start_worker_beat(worker_id: str, queues: list[str]) -> WorkerBeat:
    """Check the device (DeviceUnavailable: stop the worker), log it, register and beat."""
    settings = get_settings()
    chosen = check_device(settings.device)
    report = {**device_report(chosen), "queues": sorted(queues)}
    log.info("worker %s on %s: %s", worker_id, ",".join(queues), describe(report))
    beat = WorkerBeat(worker_id, report, settings.heartbeat_seconds).start()
    _BEATS.append(beat)
    return beat


def leave_fleet() -> None:
    """This process stops: its workers-table row goes at once instead of ageing out."""
    while _BEATS:
        _BEATS.pop().leave()
