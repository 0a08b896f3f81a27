"""Acceptance rules: the one place where draft tokens become emitted tokens.

Vocabulary (as in vLLM's rejection sampler):
- accepted tokens: draft tokens the target agrees with, walked from the root down one path;
- recovered token: sampled from the residual distribution when every child of a node is
  rejected;
- bonus token: sampled from the target at the last accepted node when no draft child is
  offered. Recovered or bonus, exactly one target token closes every round, so a round emits
  (accepted + 1) tokens.

Greedy (temperature 0): follow the child equal to the target's argmax.

Sampling: recursive rejection sampling over the children of each node (SpecInfer, Miao et al.
2024, Alg. 2; EAGLE-2's tree variant). With target probabilities p at a node and a child x
drawn from q, accept x with probability min(1, p(x) / q(x)); on rejection p <- norm(max(p - q, 0))
and the next child is tried. A deterministic draft (top-k choice) is a point mass q = delta_x:
accept with probability p(x), and on rejection p(x) <- 0. Temperature, top-k and top-p shape p
at EVERY node, the bonus/recovered token included (the reference EAGLE code once sampled the
bonus token from the raw distribution). The output is distributed exactly as sampling the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vispec_bench.errors import InputError
from vispec_bench.engine.draft_tree import DraftTree, parents_from_mask


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off

    def __post_init__(self):
        if self.temperature < 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def target_probs(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Logits [..., V] -> the sampling distribution, in HF generate's order: temperature, top-k, top-p."""
    logits = logits.float() / config.temperature
    if config.top_k > 0:
        kth = torch.topk(logits, min(config.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        # As HF's TopPLogitsWarper: drop the low tail whose mass is <= 1 - top_p, keep >= 1 token.
        sorted_logits, sorted_index = torch.sort(logits, dim=-1, descending=False)
        tail_mass = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = tail_mass <= 1 - config.top_p
        remove_sorted[..., -1] = False
        remove = remove_sorted.scatter(-1, sorted_index, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits.softmax(dim=-1)


def first_token(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None) -> int:
    """The token after the prompt (from prefill logits [V])."""
    if config.greedy:
        return int(logits.argmax())
    return int(torch.multinomial(target_probs(logits, config), 1, generator=generator))


def accept(logits: torch.Tensor, tree: DraftTree | None, config: SamplingConfig,
           generator: torch.Generator | None) -> tuple[list[int], int]:
    """Verify a tree. logits [n, V] of the target at each node (node 0 = root).

    Returns (path, closing_token): path is the ascending list of accepted node indices
    starting with the root; closing_token is the bonus or recovered token emitted after it.
    """
    if tree is None or tree.num_nodes == 1:
        return [0], first_token(logits[0], config, generator)
    if config.greedy:
        return accept_greedy(logits, tree)
    draft_tokens = tree.tokens.tolist()
    children = tree.children
    path = [0]
    while True:
        node = path[-1]
        p = target_probs(logits[node], config)  # [V]
        next_node = None
        for child in children[node]:
            x = draft_tokens[child - 1]
            q = None if tree.draft_probs is None else tree.draft_probs[child - 1].float()
            ratio = p[x] if q is None else torch.clamp(p[x] / q[x], max=1.0)
            if float(torch.rand((), generator=generator, device=p.device)) < float(ratio):
                next_node = child
                break
            if q is None:
                p = p.clone()
                p[x] = 0.0
            else:
                p = torch.clamp(p - q, min=0.0)
            total = p.sum()
            if float(total) <= 0:  # p was entirely on rejected mass: cannot happen for a valid q
                raise RuntimeError("rejection sampling left an empty residual distribution")
            p = p / total
        if next_node is None:
            return path, int(torch.multinomial(p, 1, generator=generator))
        path.append(next_node)


def accept_greedy(logits: torch.Tensor, tree: DraftTree) -> tuple[list[int], int]:
    """Greedy verification for all nodes at once, on the logits' device, with one read to the host.

    The rule is the walk from the root that follows, at each node, the first child (in node
    order) whose token is the target's argmax there, and closes with the argmax at the last
    node. A node is on that walk exactly when every node from the root's child down to it
    (a) carries its parent's argmax and (b) has no earlier sibling that does.
    """
    device = logits.device
    choice = logits.argmax(dim=-1)  # [n] the target's token after each node
    mask = tree.ancestor_mask().to(device)  # [n, n]
    parent = parents_from_mask(mask)  # [m]
    matched = tree.tokens.to(device) == choice[parent]  # [m] (a)
    earlier_sibling = ((parent[:, None] == parent[None, :]) & matched[None, :]).tril(diagonal=-1).any(dim=1)
    followed = matched & ~earlier_sibling  # (a) and (b)
    on_path = ~(mask[1:, 1:] & ~followed[None, :]).any(dim=1)  # [m] every node from depth 1 down to it followed
    depth = mask[1:].sum(dim=1) - 1
    last = torch.where(on_path, depth, 0).argmax()  # on-path nodes form a chain: the deepest one
    last = torch.where(on_path[last], last + 1, 0)  # no node on the path: the root
    host = torch.cat([on_path.to(torch.long), choice[last][None]]).tolist()  # the one read
    return [0] + [node for node, on in enumerate(host[:-1], start=1) if on], host[-1]


def accept_typical(logits: torch.Tensor, tree: DraftTree | None, config: SamplingConfig,
                   generator: torch.Generator | None, epsilon: float = 0.09, delta: float = 0.3
                   ) -> tuple[list[int], int]:
    """Medusa's typical acceptance (Cai et al. 2024, section 2.3.1). LOSSY: not the target's distribution.

    A child x of a node is accepted when p(x) > min(epsilon, delta * exp(-H(p))), p being the
    target's distribution at the node (temperature 1 when decoding greedily); the first passing
    child in rank order is followed. The closing token is the target's argmax (greedy) or a
    sample from p.
    """
    if tree is None or tree.num_nodes == 1:
        return [0], first_token(logits[0], config, generator)
    probs = target_probs(logits, config) if not config.greedy else torch.softmax(logits.float(), dim=-1)
    entropy = -(probs * torch.log(probs.clamp_min(1e-20))).sum(-1)
    threshold = torch.minimum(torch.full_like(entropy, epsilon), delta * torch.exp(-entropy))  # [n]
    draft_tokens = tree.tokens.tolist()
    children = tree.children
    path = [0]
    while True:
        node = path[-1]
        match = next((c for c in children[node] if float(probs[node, draft_tokens[c - 1]]) > float(threshold[node])),
                     None)
        if match is None:
            closing = int(logits[node].argmax()) if config.greedy else int(
                torch.multinomial(probs[node], 1, generator=generator))
            return path, closing
        path.append(match)
