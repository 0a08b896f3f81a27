"""The runner's engines (`--engines eager,static,compiled`): which run, in which order, and the
static caches sized once for the whole run, before the warm-up.

Every engine gets its own adapter over the same loaded model, and its own instance of every
method (a method prepares its draft for one engine: its compiled forwards belong to that engine).
The reference engine, eager when it is listed, else the first, runs first on each sample: every
other engine's AR ids are compared with its AR's.
"""

from __future__ import annotations

import time

from vispec_bench.engine.engines import DEFAULT_VERIFY_SLACK, check_engine, reserved_slack
from vispec_bench.errors import InputError
from vispec_bench.plugins.method import SampleContext


def engine_list(names: list[str]) -> list[str]:
    """The run's engines, checked (unknown name -> did-you-mean), reference engine first."""
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise InputError("--engines lists no engine: give eager, static or compiled")
    for name in names:
        check_engine(name)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"--engines lists {', '.join(duplicates)} more than once")
    reference = "eager" if "eager" in names else names[0]
    return [reference] + [n for n in names if n != reference]


def proposer_slack(methods, adapter, sample_id: str) -> int:
    """Cache entries beyond prompt + token cap that any method's round may append at once: what
    decode() itself reserves (the largest verify block or cache_slack of each proposer, the
    prefill's DEFAULT_VERIFY_SLACK), so that decode's own reserve never grows a cache."""
    slack = DEFAULT_VERIFY_SLACK
    for method in methods:
        proposer = method.make_proposer(adapter, SampleContext(sample_id, reference_ids=[]))
        if proposer is not None:
            slack = max(slack, reserved_slack(proposer))
    return slack


def reserve_for_run(adapters: dict, methods_by_engine: dict, samples: list, max_new_tokens: int) -> dict:
    """Size every static engine's caches for the run's longest prompt (each prompt built once,
    untimed) + the token cap + the largest block a round appends, so that no cache grows (and no
    compiled shape changes) inside a timed region. Returns {engine: tokens reserved}."""
    static = {name: adapter for name, adapter in adapters.items() if adapter.engine.static}
    if not static or not samples:
        return {}
    first = next(iter(adapters.values()))  # prompts do not depend on the engine
    longest = max(int(first.build_prompt(s.messages, s.images).input_ids.shape[0]) for s in samples)
    reserved = {}
    for name, adapter in static.items():
        tokens = longest + max_new_tokens + proposer_slack(methods_by_engine[name], adapter, samples[0].sample_id)
        adapter.reserve(tokens)
        reserved[name] = tokens
    return reserved


def warmup_info(adapter, rank: int, device: str, seconds: float, reserved: int | None) -> dict:
    """What the manifest keeps of one engine's warm-up: its settings and compile time."""
    engine = adapter.engine
    return engine.describe() | {"backend": engine.backend if engine.compiled else None, "reserved_tokens": reserved,
                                "compile_s": engine.compile_s, "warmup_s": seconds, "rank": rank, "device": device,
                                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
