"""Medusa (Cai et al., 2024): K extra decoding heads on the target's last hidden state.

Head i (0-based) reads h_t, the target's hidden state that predicts x_{t+1}, and predicts
x_{t+i+2}: ResBlock(h) = h + SiLU(W h + b) with W zero-initialised (so an untrained head starts
as the target's own next-token head), then a vocabulary projection. We share the target's
frozen lm_head by default (`share_lm_head=true`): a per-head projection costs H x V parameters
(28 M at SmolLM2's 49k vocabulary, 131 M at Vicuna-7B's), and the papers' heads start from a
copy of it anyway; `share_lm_head=false` gives each head its own copy to fine-tune.

Tree: a fixed sparse tree over the heads' top-k ranks (paper section 2.1.2). A node at depth d
is a path of ranks (r_1, ..., r_d); its token is head (d-1)'s r_d-th choice. The default tree
is built best-first under a prior on head accuracy (63 nodes by default); a JSON list of rank
paths can be given instead.

Published heads load as they are (vispec_bench.drafts.checkpoints.medusa_published_state):
`medusa_lm_head.pt` (each head with its own vocabulary projection), the ResBlock-only
`medusa_lm_head.safetensors` and the ViSpec repo's Medusa baseline (shared lm_head); the file
decides the number of heads and whether the lm_head is shared. `medusa-dynamic`
(methods/medusa_dynamic.py) is the same heads with EAGLE-2's dynamic tree.

Training loss: head k (0-based) is weighted by 0.8^k, as in the Medusa paper (section 2.2,
lambda_k = 0.8^k); the authors' training scripts (FasterDecoding/Medusa, train_legacy.py) sum the
heads' cross-entropies unweighted. We follow the paper.

Acceptance: the engine's lossless rule by default (greedy or rejection sampling). Typical
acceptance (section 2.3.1) is available as `typical=true`; it is LOSSY — the output is no longer
distributed as the target's — and every record and report says so.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import json
from dataclasses import dataclass

import torch
from torch import nn

from vispec_bench.errors import InputError
from vispec_bench.drafts import tree_settings
from vispec_bench.drafts.checkpoints import check_published, load_matching, medusa_published_state
from vispec_bench.engine.acceptance import accept_typical
from vispec_bench.drafts.vocab import head_weight, to_draft, to_vocab, token_map_of
from vispec_bench.plugins.draft_training import DraftTraining
from vispec_bench.plugins.method import DraftMethod, DraftOptions
from vispec_bench.engine.proposer import NO_DRAFT_CACHE, Proposer
from vispec_bench.engine.draft_tree import DraftTree


MEDUSA_DEVICE_NODES = {"cuda": 63, "cpu": 10}  # default tree sizes (tree_nodes=0); see vispec_bench.drafts.tree_settings


class ResBlock(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.linear = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.linear.weight)  # identity at start: head i begins as the target's lm_head
        self.act = nn.SiLU()

    def forward(self, x):
        return x + self.act(self.linear(x))


class MedusaHeads(nn.Module):
    def __init__(self, hidden: int, vocab: int, num_heads: int, share_lm_head: bool, lm_head: nn.Module | None = None):
        super().__init__()
        self.blocks = nn.ModuleList([ResBlock(hidden) for _ in range(num_heads)])
        self.share_lm_head = share_lm_head
        self.register_buffer("token_map", None)  # reduced draft vocabulary (shared lm_head only), if fitted
        self.projections = None
        if not share_lm_head:
            self.projections = nn.ModuleList([nn.Linear(hidden, vocab, bias=False) for _ in range(num_heads)])
            if lm_head is not None:
                for projection in self.projections:
                    projection.weight.data.copy_(lm_head.weight.data)

    def forward(self, hidden: torch.Tensor, lm_head_weight: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] -> logits [K, ..., V] (V = the draft vocabulary; `lm_head_weight` is already
        reduced to it when a token map is set)."""
        outs = []
        for i, block in enumerate(self.blocks):
            weight = lm_head_weight if self.share_lm_head else self.projections[i].weight
            outs.append(nn.functional.linear(block(hidden), weight))
        return torch.stack(outs)


def default_tree(num_heads: int, num_nodes: int, top_k: int) -> list[tuple[int, ...]]:
    """Rank paths chosen best-first under a prior: head d is right with probability 0.6 * 0.8^d,
    and the rank-r candidate holds a share proportional to (r + 1)^-1.5 of that. Extending a path
    multiplies its weight by a factor < 1, so the chosen set is closed under prefixes."""
    share_norm = sum((r + 1) ** -1.5 for r in range(top_k))

    def factor(depth: int, rank: int) -> float:
        return 0.6 * 0.8 ** depth * (rank + 1) ** -1.5 / share_norm

    heap = [(-factor(0, r), (r,)) for r in range(top_k)]
    heapq.heapify(heap)
    chosen = []
    while heap and len(chosen) < num_nodes:
        negative_weight, path = heapq.heappop(heap)
        chosen.append(path)
        if len(path) < num_heads:
            for r in range(top_k):
                heapq.heappush(heap, (negative_weight * factor(len(path), r), path + (r,)))
    return sorted(chosen, key=lambda p: (len(p), p))


@dataclass
class MedusaOptions(DraftOptions):  # draft=random: zero-init ResBlocks + seeded noise; vocab needs share_lm_head
    num_heads: int = 5
    tree_nodes: int = 0  # default tree size, root excluded: 0 = device default (cuda 63, cpu 10), -1 = auto
    tree_top_k: int = 10  # ranks per head the default tree may use
    tree: str = ""  # optional JSON file: a list of rank paths, e.g. [[0], [1], [0, 0], ...]
    share_lm_head: bool = True
    typical: bool = False  # typical acceptance: LOSSY
    typical_epsilon: float = 0.09  # posterior threshold
    typical_delta: float = 0.3  # entropy-scaled threshold (alpha in the reference code)


class MedusaProposer(Proposer):
    def __init__(self, heads: MedusaHeads, adapter, paths: list[tuple[int, ...]], options: MedusaOptions,
                 draft_head: torch.Tensor):
        self.heads, self.draft_head, self.device = heads, draft_head, adapter.device
        self.paths = paths
        index = {path: i for i, path in enumerate(paths, start=1)}
        self.parents = [index.get(path[:-1], 0) for path in paths]
        self.depth_of = torch.tensor([len(p) - 1 for p in paths], device=self.device)  # head of each node
        self.rank_of = torch.tensor([p[-1] for p in paths], device=self.device)
        self.max_rank = max(p[-1] for p in paths) + 1
        self.max_verify_tokens = len(paths) + 1  # a static tree: always this size (root included)
        if options.typical:
            self.acceptance_rule = functools.partial(accept_typical, epsilon=options.typical_epsilon,
                                                     delta=options.typical_delta)

    def start(self, adapter, prompt, prefill, first_token):
        self.last_hidden = prefill.hidden[-1]  # h_t that predicted the root token

    def absorb(self, result):
        self.last_hidden = result.path_hidden[-1]

    def draft_cost(self) -> dict:
        return dict(NO_DRAFT_CACHE)  # the heads read the target's last hidden state: no draft cache

    @torch.no_grad()
    def propose(self, emitted, budget):
        logits = self.heads(self.last_hidden, self.draft_head)  # [K, V]
        candidates = to_vocab(logits.topk(self.max_rank, dim=-1).indices, token_map_of(self.heads))  # [K, max_rank]
        return DraftTree(candidates[self.depth_of, self.rank_of], list(self.parents))


class Medusa(DraftMethod, DraftTraining):
    name = "medusa"
    Options = MedusaOptions

    def is_lossless(self) -> bool:
        return not self.options.typical

    def tree_paths(self) -> list[tuple[int, ...]]:
        opts = dataclasses.replace(self.options, num_heads=len(self.heads.blocks))  # a published file decides
        if opts.tree:
            with open(opts.tree) as handle:
                paths = sorted((tuple(p) for p in json.load(handle)), key=lambda p: (len(p), p))
            missing = [p for p in paths if len(p) > 1 and p[:-1] not in set(paths)]
            if missing or any(len(p) > opts.num_heads for p in paths):
                raise InputError(f"medusa tree {opts.tree}: every path's prefix must be in the tree and no path "
                                 f"may be deeper than num_heads={opts.num_heads} (bad: {missing[:3]})")
            return paths
        return default_tree(opts.num_heads, opts.tree_nodes, opts.tree_top_k)

    def build_draft(self, adapter, checkpoint=None) -> MedusaHeads:
        num_heads, share = self.options.num_heads, self.options.share_lm_head
        if checkpoint is not None and checkpoint.layout == "published":
            _, num_heads, share = medusa_published_state(checkpoint, f"medusa draft ({checkpoint.file})")
        return MedusaHeads(adapter.hidden_size, adapter.vocab_size, num_heads, share, adapter.lm_head)

    def check_published(self, checkpoint, adapter, what: str) -> None:
        state, _, share = medusa_published_state(checkpoint, what)
        # Shared lm_head: the heads project through the target's own vocabulary, which is all a
        # ResBlock-only file can be checked against (plus config.json's vocab_size when it has one).
        vocab = adapter.vocab_size if share else state["projections.0.weight"].shape[0]
        check_published(checkpoint, adapter, what, hidden_size=state["blocks.0.linear.weight"].shape[0],
                        vocab_size=vocab)

    def load_checkpoint(self, draft, checkpoint, source: str) -> None:
        if checkpoint.layout != "published":
            return super().load_checkpoint(draft, checkpoint, source)
        state, _, _ = medusa_published_state(checkpoint, source)
        load_matching(draft, state, f"{self.name} checkpoint {source} ({checkpoint.file})")

    def randomize(self, heads) -> None:
        for block in heads.blocks:  # zero-init heads would all copy the lm_head: perturb them
            nn.init.normal_(block.linear.weight, std=0.05)

    def prepare(self, adapter):
        self.heads = self.load_draft_network(adapter)
        self.draft_head = head_weight(adapter.lm_head.weight, token_map_of(self.heads))
        self.paths, self.tree_choice = self._sized_tree(adapter)

    def _sized_tree(self, adapter) -> tuple[list[tuple[int, ...]], dict]:
        """The tree paths and how their number was chosen (see vispec_bench.drafts.tree_settings)."""
        opts = self.options
        kind = tree_settings.device_kind(adapter.device)
        how = {"device_kind": kind}
        if opts.tree:
            how["choice"] = "file"
        elif opts.tree_nodes == -1:
            hidden = torch.zeros(adapter.hidden_size, device=adapter.device, dtype=adapter.dtype)
            with torch.no_grad():
                heads_s = tree_settings.median_seconds(lambda: self.heads(hidden, self.draft_head).topk(opts.tree_top_k),
                                                     adapter.device, repeats=5)
            costs = tree_settings.verify_costs(adapter)
            nodes, rates = tree_settings.choose_total_token(costs, heads_s, draft_forwards=1)
            how.update(choice="auto", verify_costs_ms={n: round(1000 * c, 3) for n, c in costs.items()},
                       heads_ms=round(1000 * heads_s, 3), expected_tokens_per_s={n: round(r, 2) for n, r in rates.items()})
            self.options = dataclasses.replace(opts, tree_nodes=nodes)
        elif opts.tree_nodes == 0:
            how["choice"] = "device default"
            self.options = dataclasses.replace(opts, tree_nodes=MEDUSA_DEVICE_NODES[kind])
        elif opts.tree_nodes < -1:
            raise InputError(f"medusa.tree_nodes must be >= 1, 0 (device default) or -1 (auto), got {opts.tree_nodes}")
        else:
            how["choice"] = "given"
        paths = self.tree_paths()
        self.options = opts  # the options (and the run's config hash) stay as the user gave them
        return paths, {**how, "tree_nodes": len(paths), "num_heads": len(self.heads.blocks), "convention": "reference"}

    def runtime_settings(self) -> dict:
        return self.tree_choice

    def fit_to_data(self, draft, answer_rows, adapter) -> None:
        if self.options.vocab and not self.options.share_lm_head:
            raise InputError("medusa.vocab (a reduced draft vocabulary) needs share_lm_head=true")
        super().fit_to_data(draft, answer_rows, adapter)

    def make_proposer(self, adapter, context):
        return MedusaProposer(self.heads, adapter, self.paths, self.options, self.draft_head)

    def make_trainer(self, draft: nn.Module, lm_head: nn.Module):
        return MedusaTrainer(draft, lm_head)


class MedusaTrainer:
    """Head i at position t: cross-entropy against token t+i+2; the target stays frozen."""

    def __init__(self, heads: MedusaHeads, lm_head: nn.Module):
        self.heads, self.lm_head = heads, lm_head  # the target's lm_head, frozen

    def _per_head(self, features):
        """Per head: (logits over the draft vocabulary, label indices in it; -1 = outside the token map)."""
        ids, hidden, mask = features.input_ids, features.hidden, features.loss_mask
        token_map = token_map_of(self.heads)
        logits = self.heads(hidden, head_weight(self.lm_head.weight, token_map))  # [K, T, V]
        ids = to_draft(ids, token_map, self.lm_head.weight.shape[0])
        for head in range(logits.shape[0]):
            offset = head + 2
            if ids.shape[0] <= offset:
                return
            label_positions = torch.arange(offset, ids.shape[0], device=ids.device)
            valid = mask[label_positions]  # the predicted token is part of the answer
            yield head, logits[head, : ids.shape[0] - offset][valid], ids[label_positions][valid]

    def loss(self, features):
        total, logs = 0.0, {}
        for head, logits, labels in self._per_head(features):
            if int((labels >= 0).sum()) == 0:  # nothing to learn, or every label outside the token map
                continue
            head_loss = nn.functional.cross_entropy(logits.float(), labels, ignore_index=-1)
            # The Medusa paper weights head k by 0.8^k (the authors' scripts sum unweighted): near
            # heads matter most for acceptance.
            total = total + 0.8 ** head * head_loss
            logs[f"loss_head{head}"] = float(head_loss.detach())
        return total, logs

    @torch.no_grad()
    def accuracy(self, features, max_depth: int = 5):
        return {f"head{head}": (int((logits.argmax(-1) == labels).sum()), int(labels.numel()))
                for head, logits, labels in self._per_head(features) if head < max_depth}
