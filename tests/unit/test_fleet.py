"""Worker start-up on GPU hosts, faked on CPU: fail fast without CUDA, one GPU per worker."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.fake_cuda import FakeCuda
from worker.fleet import (
    DeviceUnavailable,
    check_device,
    describe,
    device_report,
    nvidia_driver_version,
    nvidia_present,
)
from worker.main import child_environment
from worker.training import device as device_module

PROC_VERSION = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.82.01  Wed Oct 27 21:21:55 UTC 2021\n"
    "GCC version:  gcc version 9.3.0 (Ubuntu 9.3.0-17ubuntu1~20.04)\n"
)


def gpu_host(tmp_path: Path, driver: str | None = PROC_VERSION, devices: int = 1) -> Path:
    """A fake / with NVIDIA's /proc entry and /dev nodes."""
    if driver is not None:
        (tmp_path / "proc/driver/nvidia").mkdir(parents=True)
        (tmp_path / "proc/driver/nvidia/version").write_text(driver)
    (tmp_path / "dev").mkdir()
    for index in range(devices):
        (tmp_path / f"dev/nvidia{index}").touch()
    return tmp_path


def test_driver_version_is_read_from_proc(tmp_path: Path) -> None:
    assert nvidia_driver_version(gpu_host(tmp_path)) == "470.82.01"
    open_kernel = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.14  Release"
    other = gpu_host(tmp_path / "open", open_kernel)
    assert nvidia_driver_version(other) == "550.54.14"
    assert nvidia_driver_version(tmp_path / "nowhere") is None


def test_nvidia_devices_without_a_driver_still_count(tmp_path: Path) -> None:
    assert nvidia_present(gpu_host(tmp_path, driver=None, devices=2))
    bare = tmp_path / "bare"
    (bare / "dev").mkdir(parents=True)
    assert not nvidia_present(bare)


def test_gpu_host_without_usable_cuda_fails_fast_with_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(device_module, "cuda", FakeCuda(count=0))
    host = gpu_host(tmp_path)
    with pytest.raises(DeviceUnavailable) as caught:
        check_device("auto", host)  # "auto" on a GPU host means the GPU, not a silent CPU
    message = str(caught.value)
    assert "driver 470.82.01" in message and f"torch {torch.__version__}" in message
    assert ("built for CUDA" in message) or ("built without CUDA" in message)
    assert "GPT2FT_DEVICE=cpu" in message
    with pytest.raises(DeviceUnavailable, match="driver not loaded"):
        check_device("cuda", tmp_path / "nowhere")
    # Asking for the CPU on purpose, or a host without NVIDIA devices, trains on the CPU.
    assert check_device("cpu", host) == torch.device("cpu")
    assert check_device("auto", tmp_path / "nowhere") == torch.device("cpu")


def test_a_gpu_index_beyond_the_visible_ones_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_module, "cuda", FakeCuda(count=2))
    assert check_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DeviceUnavailable, match="only 2 GPU"):
        check_device("cuda:2")


def test_report_names_device_memory_and_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeCuda(count=2)
    h200 = SimpleNamespace(name="NVIDIA H200", total_memory=143 * 1024**3, major=9, minor=0)
    fake.get_device_properties = lambda index: h200  # type: ignore[attr-defined]
    monkeypatch.setattr(device_module, "cuda", fake)
    report = device_report(torch.device("cuda:1"), gpu_host(tmp_path))
    assert report["device_kind"] == "cuda" and report["device_count"] == 2
    assert report["memory_bytes"] == 143 * 1024**3 and report["driver_version"] == "470.82.01"
    assert report["devices"][1] == {
        "index": 1, "name": "NVIDIA H200", "memory_bytes": 143 * 1024**3,
        "capability": "9.0", "bf16": True,
    }  # fmt: skip
    line = describe(report)
    assert "NVIDIA H200, 143.0 GiB" in line and "driver 470.82.01" in line
    cpu = device_report(torch.device("cpu"), tmp_path / "nowhere")
    assert (cpu["device_kind"], cpu["device_count"], cpu["memory_bytes"]) == ("cpu", 0, None)
    assert describe(cpu).startswith("device cpu")


def test_each_worker_sees_only_its_own_gpu() -> None:
    env = child_environment("cuda:1", {"PATH": "/bin"})
    assert (env["CUDA_VISIBLE_DEVICES"], env["GPT2FT_DEVICE"], env["PATH"]) == ("1", "cuda", "/bin")
    # cuda:N counts within what the operator already made visible.
    env = child_environment("cuda:1", {"CUDA_VISIBLE_DEVICES": "4, 6"})
    assert env["CUDA_VISIBLE_DEVICES"] == "6"
    with pytest.raises(ValueError, match="lists 2 GPU"):
        child_environment("cuda:2", {"CUDA_VISIBLE_DEVICES": "4,6"})
    assert child_environment("auto", {"A": "b"}) == {"A": "b"}
    assert "CUDA_VISIBLE_DEVICES" not in child_environment("cuda", {})
