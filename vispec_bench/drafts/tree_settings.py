"""Draft-tree settings that fit the device.

Verifying a tree of n nodes costs one target forward over n tokens. On a GPU in eager mode
that forward is memory-bound and costs about the same for 1 or 60 tokens; on a 2-core CPU it
is compute-bound and a 30-node tree costs ~2.3 single-token steps (measured on the testbed). One default
cannot serve both, so:

- `total_token=0` (the default) takes the device's defaults below;
- `total_token=-1` measures the target's forward cost for each candidate size at start-up
  (like EAGLE's total_token=-1) and picks the size with the best expected tokens per second,
  tau_prior(n) / (verify(n) + depth x draft level), where tau_prior is a fixed prior on the
  accepted length a tree of n nodes buys (EAGLE's own -1 uses a fixed gain table as well).

The chosen settings are recorded in every record of the run (`tree_settings`).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from vispec_bench.running.instruments import synchronize


@dataclass(frozen=True)
class TreeSettings:
    depth: int
    top_k: int
    total_token: int


# cuda: the LLM papers' EAGLE-2 tree (verification is nearly free on a GPU for a small target);
# cpu: a narrow, deeper tree, since every verified node costs real compute there.
DEVICE_DEFAULTS = {
    "cuda": TreeSettings(depth=5, top_k=8, total_token=60),
    "cpu": TreeSettings(depth=5, top_k=4, total_token=10),
}
CANDIDATE_SIZES = (4, 6, 8, 10, 12, 16, 24, 32, 48, 60)


def device_kind(device) -> str:
    return "cuda" if str(device).startswith("cuda") else "cpu"


def tau_prior(num_nodes: int) -> float:
    """A prior on the mean accepted length of a dynamic tree of `num_nodes` drafted nodes; its shape
    (log growth: ~2.3 at 4 nodes, ~3.6 at 30, ~4.1 at 60) follows the EAGLE-2 paper's ablation."""
    return 1.4 + 0.65 * math.log(num_nodes)


def median_seconds(call, device, repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def verify_costs(adapter, sizes=CANDIDATE_SIZES, repeats: int = 3) -> dict[int, float]:
    """Seconds for one target forward over 1 + n tokens with a tree mask, after a short prompt."""
    prompt = adapter.build_prompt([{"role": "user", "content": "Describe a sunny day at the beach in detail."}], [])
    adapter.prefill(prompt)
    tokens = prompt.input_ids[-8:].repeat(16)
    costs = {}
    for size in (0, *sizes):
        count = size + 1
        mask = torch.ones(count, count, dtype=torch.bool, device=adapter.device).tril()

        def step():
            adapter.forward(tokens[:count], ancestor_mask=mask)
            adapter.commit([], count)  # drop what the forward appended

        costs[count] = median_seconds(step, adapter.device, repeats)
    return costs


def choose_total_token(costs: dict[int, float], draft_level_s: float, depth: int,
                       sizes=CANDIDATE_SIZES) -> tuple[int, dict[int, float]]:
    """The size with the best expected tokens per second, and that rate for every size."""
    rates = {n: tau_prior(n) / (costs[n + 1] + depth * draft_level_s) for n in sizes if n + 1 in costs}
    return max(rates, key=rates.get), rates


def resolve(depth: int, top_k: int, total_token: int, device, measure=None) -> tuple[TreeSettings, dict]:
    """Options (0 = device default, total_token -1 = auto) -> settings, and how they were chosen.

    `measure` is a callable returning (verify costs, seconds per draft level) for auto sizing.
    """
    default = DEVICE_DEFAULTS[device_kind(device)]
    depth = depth or default.depth
    top_k = top_k or default.top_k
    how = {"device_kind": device_kind(device)}
    if total_token == -1:
        costs, draft_level_s = measure()
        total_token, rates = choose_total_token(costs, draft_level_s, depth)
        how.update(choice="auto", verify_costs_ms={n: round(1000 * s, 3) for n, s in costs.items()},
                   draft_level_ms=round(1000 * draft_level_s, 3),
                   expected_tokens_per_s={n: round(r, 2) for n, r in rates.items()})
    elif total_token == 0:
        total_token = default.total_token
        how["choice"] = "device default"
    else:
        how["choice"] = "given"
    settings = TreeSettings(depth, top_k, total_token)
    return settings, {**asdict(settings), **how}
