"""Instrumentation kept out of the timed region.

- `GpuMonitor` reads NVML (power, SM and memory clocks, utilisation, temperature, memory in
  use, and the device's cumulative energy counter) only BETWEEN timed samples: a snapshot
  before and after each, so energy per generated token is the counter's difference over the
  sample and nothing samples concurrently with the timed code (a sampler thread would share
  the GIL with a Python-bound decode loop). Without NVML it says why, and everything else works.
- `PhaseTimer` splits each round into draft, verify and accept/commit time, and (with
  `instrument`) times the target and draft forwards inside them, so that the rest, the
  harness, is measured. It synchronises the device at every boundary, which slows decoding,
  so the runner uses it only in a separate profiling pass whose times never enter a speedup. `NULL_PHASE_TIMER` is the
  engine's default: the same calls, doing nothing (no synchronisation, no clock read).
- `synchronize` waits for the device's queued work: every clock read around device work
  follows one (the timing rule of docs/metrics.md).
"""

from __future__ import annotations

import functools
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn


def median_seconds(call, device, repeats: int) -> float:
    """Median wall time of `call` over `repeats` runs after one warm-up, synchronised around each."""
    call()  # warm-up
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued kernels (CUDA launches are asynchronous); a no-op on a CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class GpuMonitor:
    def __init__(self, device: str):
        self.available = False
        self.reason = ""
        self.handle = None
        if torch.device(device).type != "cuda":
            self.reason = "not a CUDA device: NVML measures NVIDIA GPUs only"
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            index = torch.device(device).index or 0
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.nvml = pynvml
            self.available = True
        except Exception as err:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: recorded, not fatal
            self.reason = f"{type(err).__name__}: {err}"

    def _read(self, function, *args):
        try:
            return function(self.handle, *args)
        except self.nvml.NVMLError:
            return None

    def snapshot(self) -> dict:
        if not self.available:
            return {}
        nvml = self.nvml
        utilization = self._read(nvml.nvmlDeviceGetUtilizationRates)
        memory = self._read(nvml.nvmlDeviceGetMemoryInfo)
        power = self._read(nvml.nvmlDeviceGetPowerUsage)
        return {
            "energy_mj": self._read(nvml.nvmlDeviceGetTotalEnergyConsumption),  # millijoules since driver load
            "power_w": None if power is None else power / 1000,
            "sm_clock_mhz": self._read(nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_SM),
            "mem_clock_mhz": self._read(nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_MEM),
            "gpu_util_pct": None if utilization is None else utilization.gpu,
            "temperature_c": self._read(nvml.nvmlDeviceGetTemperature, nvml.NVML_TEMPERATURE_GPU),
            "memory_used_mb": None if memory is None else memory.used / 2 ** 20,
        }

    def describe(self) -> dict:
        if not self.available:
            return {"available": False, "reason": self.reason}
        nvml = self.nvml
        return {"available": True, "name": self._read(nvml.nvmlDeviceGetName),
                "driver": nvml.nvmlSystemGetDriverVersion(),
                "power_limit_w": (self._read(nvml.nvmlDeviceGetPowerManagementLimit) or 0) / 1000,
                "max_sm_clock_mhz": self._read(nvml.nvmlDeviceGetMaxClockInfo, nvml.NVML_CLOCK_SM)}

    def sample_stats(self, before: dict, after: dict, num_tokens: int) -> dict:
        """Per-sample figures from the snapshots around it; energy needs the counter on both sides."""
        if not self.available:
            return {"available": False, "reason": self.reason}
        stats = {"available": True, "before": before, "after": after}
        if before.get("energy_mj") is not None and after.get("energy_mj") is not None and num_tokens:
            joules = (after["energy_mj"] - before["energy_mj"]) / 1000
            stats.update(joules=joules, joules_per_token=joules / num_tokens)
        return stats


@dataclass
class PhaseTimer:
    """Accumulates per-round phase times; every mark synchronises the device first.

    Within `instrument(adapter, proposer)` it also times the forwards themselves, synchronising
    before and after each: the target's (`adapter.forward`) and the draft network's (the
    proposer's own nn.Module attributes, and the methods it names in `draft_forward_methods`).
    What a round spends outside them is the harness: tree building, masks, acceptance, cache
    bookkeeping, Python. The profiling pass serialises host and device at every boundary, so its
    harness share is an upper bound on the timed run's, where host work may overlap the device's.
    """

    device: torch.device | str
    rounds: list[dict] = field(default_factory=list)
    _last: float = 0.0
    forwards_timed: bool = False  # instrument() was used: the totals split forwards from the harness
    _in_forward: bool = False

    def start_round(self) -> None:
        self._sync()
        self._last = time.perf_counter()
        self.rounds.append({})

    def mark(self, phase: str) -> None:
        self._sync()
        now = time.perf_counter()
        self.rounds[-1][phase] = self.rounds[-1].get(phase, 0.0) + now - self._last
        self._last = now

    def _sync(self) -> None:
        synchronize(self.device)

    def timed(self, kind: str, function):
        """`function` adding its calls' time to the round's `<kind>_forward` (outside a round, or
        inside another timed call, a call is not counted)."""

        @functools.wraps(function)
        def call(*args, **kwargs):
            if not self.rounds or self._in_forward:
                return function(*args, **kwargs)
            self._sync()
            start, self._in_forward = time.perf_counter(), True
            try:
                return function(*args, **kwargs)
            finally:
                self._sync()
                self._in_forward = False
                key = f"{kind}_forward"
                self.rounds[-1][key] = self.rounds[-1].get(key, 0.0) + time.perf_counter() - start

        return call

    @contextmanager
    def instrument(self, adapter, proposer):
        """Time the target's and the draft's forwards while in effect (instance attributes that
        shadow the methods, removed on exit). Draft modules: the proposer's nn.Module attributes
        that are not part of the target (EAGLE's `embed` is the target's embedding)."""
        target_modules = {id(m) for m in adapter.model.modules()}
        wrapped = [(adapter, "forward", "target")]
        if proposer is not None:
            if getattr(proposer, "instrument_modules", True):
                wrapped += [(module, "forward", "draft") for module in vars(proposer).values()
                            if isinstance(module, nn.Module) and id(module) not in target_modules]
            wrapped += [(proposer, name, "draft") for name in getattr(proposer, "draft_forward_methods", ())]
        shadowed = []
        try:
            for owner, name, kind in wrapped:
                shadowed.append((owner, name, owner.__dict__.get(name)))
                setattr(owner, name, self.timed(kind, getattr(owner, name)))
            self.forwards_timed = True
            yield self
        finally:
            for owner, name, before in reversed(shadowed):
                if before is None:
                    delattr(owner, name)
                else:
                    setattr(owner, name, before)

    def totals(self) -> dict:
        phases = ("draft", "verify", "accept_commit")
        totals = {f"{p}_s": sum(r.get(p, 0.0) for r in self.rounds) for p in phases} | {"num_rounds": len(self.rounds)}
        if self.forwards_timed:
            forwards = {f"{kind}_forward_s": sum(r.get(f"{kind}_forward", 0.0) for r in self.rounds)
                        for kind in ("target", "draft")}
            round_s = sum(totals[f"{p}_s"] for p in phases)
            harness_s = round_s - sum(forwards.values())
            totals |= forwards | {"harness_s": harness_s, "harness_share": harness_s / round_s if round_s > 0 else None}
        return totals


class NullPhaseTimer:
    """PhaseTimer's interface doing nothing, so the engine calls its timer unconditionally and a
    timed run pays for no synchronisation and no clock read."""

    def start_round(self) -> None:
        pass

    def mark(self, phase: str) -> None:
        pass


NULL_PHASE_TIMER = NullPhaseTimer()
