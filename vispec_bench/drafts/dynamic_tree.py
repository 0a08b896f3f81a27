"""EAGLE-2's dynamic draft tree, independent of what produces each level's distributions.

The tree (EAGLE-2 section 4; the reference's `topK_genrate`), with the settings of
vispec_bench.drafts.tree_settings (reference convention):

- level 1: the root's top_k tokens, scored by their log-probability;
- each further level (depth of them): the top_k nodes of the previous level by cumulative
  log-probability (the "frontier", best first) each get top_k children, scored by the parent's
  score plus the child's log-probability;
- finally the total_token - 1 best nodes over all levels are kept. A child's score never
  exceeds its parent's, so the kept set is closed under ancestors (on exact ties we add the
  missing ancestors, which the reference would not; with real-valued scores ties do not occur).

Node ids follow creation order — level by level, within a level frontier row by row, children
by rank — which is also the order of the reference's `scores_list`, so the kept nodes come out
in the same order as the reference's draft tokens. The EAGLE-2 draft, ViSpec and Medusa with a
dynamic tree (ViSpec's Medusa baseline) all grow their trees with this class.
"""

from __future__ import annotations

import torch

from vispec_bench.engine.draft_tree import DraftTree


class DynamicTree:
    """The tree as device tensors, grown a level at a time: no per-node Python and no host
    synchronisation until `select`, which reads the kept structure back once."""

    def __init__(self, top_k: int):
        self.top_k = top_k
        self.tokens: torch.Tensor | None = None  # [N] node n >= 1 has token tokens[n - 1]
        self.parents: torch.Tensor | None = None  # [N] parent node id of node n at parents[n - 1] (0 = the root)
        self.scores: torch.Tensor | None = None  # [N] float32 cumulative log-probability of node n at scores[n - 1]
        # [N + 1, N + 1] bool: reach[i, j] = node j is node i or one of its ancestors (the root, 0, included)
        self.reach: torch.Tensor | None = None

    @property
    def num_nodes(self) -> int:
        """Draft nodes so far (the root not counted)."""
        return 0 if self.tokens is None else self.tokens.shape[0]

    def add_root_children(self, log_probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The root's top_k (log-probabilities [k], target token ids [k], best first) -> level 1's node ids [k]."""
        device = log_probs.device
        self.tokens = torch.empty(0, dtype=torch.long, device=device)
        self.parents = torch.empty(0, dtype=torch.long, device=device)
        self.scores = torch.empty(0, dtype=torch.float32, device=device)
        self.reach = torch.ones(1, 1, dtype=torch.bool, device=device)
        root = torch.zeros(1, dtype=torch.long, device=device)
        self._add(log_probs[None], tokens[None], root, parent_scores=torch.zeros(1, device=device))
        return torch.arange(1, self.num_nodes + 1, device=device)

    def add_level(self, frontier: torch.Tensor, log_probs: torch.Tensor, tokens: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Children of the frontier nodes (ids [f]; row r of log_probs/tokens [f, k] belongs to frontier[r]).

        Returns the next frontier (the ids of the top_k new nodes by cumulative score, best first)
        and, for each of them, the row of its parent in this level's input (what the caller feeds next).
        """
        first_child = self.num_nodes + 1
        cumulative = self._add(log_probs, tokens, frontier, self.scores[frontier - 1])
        best = cumulative.flatten().topk(min(self.top_k, cumulative.numel())).indices
        return first_child + best, best // log_probs.shape[1]

    def _add(self, log_probs, tokens, parents: torch.Tensor, parent_scores: torch.Tensor) -> torch.Tensor:
        cumulative = parent_scores[:, None] + log_probs.float()  # [f, k]
        new_parents = parents.repeat_interleave(log_probs.shape[1])  # children row by row, by rank
        old, added = self.reach.shape[0], new_parents.shape[0]
        reach = self.reach.new_zeros(old + added, old + added)
        reach[:old, :old] = self.reach
        reach[old:, :old] = self.reach[new_parents]  # a child sees what its parent sees ...
        reach[old:, old:].fill_diagonal_(True)  # ... and itself
        self.reach = reach
        self.tokens = torch.cat([self.tokens, tokens.reshape(-1).to(self.tokens.device, torch.long)])
        self.parents = torch.cat([self.parents, new_parents])
        self.scores = torch.cat([self.scores, cumulative.flatten()])
        return cumulative

    def sees(self, nodes: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        """[len(nodes), len(others)] bool: others[j] is nodes[i] or one of its ancestors."""
        return self.reach[nodes][:, others]

    def select(self, draft_nodes: int) -> DraftTree:
        """The draft_nodes best nodes (ancestors included), in creation order.

        Best = highest cumulative score, ties to the earlier node (a stable sort); the tree's
        structure comes back to the host in one read."""
        num = self.num_nodes
        order = torch.sort(-self.scores, stable=True).indices  # as sorted(key=-score): ties keep creation order
        chosen = torch.zeros(num + 1, dtype=torch.bool, device=self.reach.device)
        chosen[order[:draft_nodes] + 1] = True
        # Ancestors of chosen nodes join them, keeping the tree connected. With log-probabilities
        # (<= 0) a child never outscores its parent and ties go to the earlier node, so this adds
        # nothing; it guards scores that could (tests feed positive ones).
        keep = (self.reach & chosen[:, None]).any(dim=0)
        keep[0] = False  # the root is not a draft node
        new_index = keep.long().cumsum(0)  # kept node n -> its index in the new tree (the root stays 0)
        kept = torch.argsort((~keep[1:]).to(torch.uint8), stable=True)  # kept node ids - 1, ascending, first
        depths = self.reach.sum(dim=1) - 1
        packed = torch.cat([keep.sum()[None], new_index[self.parents[kept]], depths[kept + 1]]).tolist()
        count = packed[0]
        parents, node_depths = packed[1:1 + count], [0] + packed[1 + num:1 + num + count]
        rows = torch.cat([torch.zeros(1, dtype=torch.long, device=kept.device), kept[:count] + 1])
        return DraftTree(self.tokens[kept[:count]], parents,
                         ancestors=self.reach[rows][:, rows], known_depths=node_depths)
