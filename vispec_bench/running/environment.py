"""The environment a run was measured in: versions, device, git state, NVML availability."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "vispec-bench", "nvidia-ml-py", "easy-vqa")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_state(path: Path | None = None) -> dict:
    path = path or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None, "note": "not a git checkout"}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                                capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired) as err:
        return {"commit": None, "dirty": None, "note": f"git unavailable: {err}"}


def nvml_state() -> dict:
    """NVML facts, or why NVML is absent (e.g. NVMLError_LibraryNotFound on a CPU machine)."""
    try:
        import pynvml
    except ImportError as err:
        return {"available": False, "reason": f"pynvml not importable: {err}"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        return {"available": False, "reason": f"{type(err).__name__}: {err}"}
    try:
        return {"available": True, "driver": pynvml.nvmlSystemGetDriverVersion(),
                "num_devices": pynvml.nvmlDeviceGetCount()}
    finally:
        pynvml.nvmlShutdown()


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu: {platform.processor() or platform.machine()} x{os.cpu_count()} (torch threads {torch.get_num_threads()})"


def capture(device: str) -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "packages": {p: _version(p) for p in PACKAGES},
        "device": device,
        "device_name": device_name(device),
        "cuda": torch.version.cuda,
        "nvml": nvml_state(),
        "git": git_state(),
    }
