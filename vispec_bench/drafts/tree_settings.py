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

Convention: `depth`, `top_k` and `total_token` mean what they mean in the EAGLE reference's
`topK_genrate` (and in the EAGLE-2 / ViSpec papers): the root's top_k children form level 1 and
`depth` more levels are expanded, so a tree has up to depth + 1 levels of draft tokens, and
`total_token` counts the root, so total_token - 1 draft nodes are verified. "depth 3, top_k 8,
total_token 30" from the ViSpec paper builds 29 draft nodes over up to 4 levels, as theirs does.

The chosen settings are recorded in every record of the run (`tree_settings`), with
"convention": "reference". Records written before this convention (no "convention" key) used
depth = levels and total_token = draft nodes: their (d, k, t) is (d - 1, k, t + 1) here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from vispec_bench.running.instruments import median_seconds  # also what the methods time their drafts with


CONVENTION = "reference"  # recorded with the settings; see the module docstring


@dataclass(frozen=True)
class TreeSettings:
    """A dynamic tree in the reference's convention (module docstring)."""

    depth: int  # levels expanded after the root's children: up to depth + 1 levels of draft tokens
    top_k: int  # children per expanded node, and nodes expanded per level
    total_token: int  # verify-input size, root included: total_token - 1 draft nodes

    @property
    def levels(self) -> int:
        return self.depth + 1

    @property
    def draft_nodes(self) -> int:
        return self.total_token - 1


# cuda: 5 levels / 60 draft nodes, near the LLM papers' tree (verification is nearly free on a
# GPU for a small target); cpu: a narrow, deeper tree (5 levels, 10 draft nodes), since every
# verified node costs real compute there. Same trees as before the reference convention.
DEVICE_DEFAULTS = {
    "cuda": TreeSettings(depth=4, top_k=8, total_token=61),
    "cpu": TreeSettings(depth=4, top_k=4, total_token=11),
}
CANDIDATE_SIZES = (4, 6, 8, 10, 12, 16, 24, 32, 48, 60)  # draft nodes (root excluded) auto sizing tries


def device_kind(device) -> str:
    return "cuda" if str(device).startswith("cuda") else "cpu"


def tau_prior(num_nodes: int) -> float:
    """A prior on the mean accepted length of a dynamic tree of `num_nodes` drafted nodes; its shape
    (log growth: ~2.3 at 4 nodes, ~3.6 at 30, ~4.1 at 60) follows the EAGLE-2 paper's ablation."""
    return 1.4 + 0.65 * math.log(num_nodes)


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
            adapter.commit([])  # drop what the forward appended

        costs[count] = median_seconds(step, adapter.device, repeats)
    return costs


def choose_total_token(costs: dict[int, float], draft_level_s: float, draft_forwards: int,
                       sizes=CANDIDATE_SIZES) -> tuple[int, dict[int, float]]:
    """The number of draft nodes (root excluded) with the best expected tokens per second, and
    that rate for every size. `draft_forwards`: draft forwards per round (EAGLE: one per level)."""
    rates = {n: tau_prior(n) / (costs[n + 1] + draft_forwards * draft_level_s) for n in sizes if n + 1 in costs}
    return max(rates, key=rates.get), rates


def resolve(depth: int, top_k: int, total_token: int, device, measure=None) -> tuple[TreeSettings, dict]:
    """Options (0 = device default, total_token -1 = auto) -> settings, and how they were chosen.

    `measure` is a callable returning (verify costs, seconds per draft level) for auto sizing.
    Auto sizing picks a number of draft nodes n; total_token = n + 1 (the root counts).
    """
    default = DEVICE_DEFAULTS[device_kind(device)]
    depth = depth or default.depth
    top_k = top_k or default.top_k
    how = {"device_kind": device_kind(device)}
    if total_token == -1:
        costs, draft_level_s = measure()
        nodes, rates = choose_total_token(costs, draft_level_s, depth + 1)  # one draft forward per level
        total_token = nodes + 1
        how.update(choice="auto", verify_costs_ms={n: round(1000 * s, 3) for n, s in costs.items()},
                   draft_level_ms=round(1000 * draft_level_s, 3),
                   expected_tokens_per_s={n + 1: round(r, 2) for n, r in rates.items()})  # keyed by total_token
    elif total_token == 0:
        total_token = default.total_token
        how["choice"] = "device default"
    else:
        how["choice"] = "given"
    if total_token < 2:
        raise ValueError(f"total_token counts the root: it must be >= 2 (one draft node) or 0/-1; got {total_token}")
    settings = TreeSettings(depth, top_k, total_token)
    return settings, {**asdict(settings), "convention": CONVENTION, **how}
