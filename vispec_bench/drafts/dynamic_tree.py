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
    def __init__(self, top_k: int):
        self.top_k = top_k
        self.tokens: list[int] = []  # node n >= 1 has token tokens[n - 1]
        self.parents: list[int] = []
        self.scores: list[float] = []  # cumulative log-probability of node n at scores[n - 1]
        self.ancestors: list[set[int]] = [set()]  # node ids (>= 1) above each node; index 0 = the root

    def add_root_children(self, log_probs: torch.Tensor, tokens: torch.Tensor) -> list[int]:
        """The root's top_k (log-probabilities [k], target token ids [k], best first) -> level 1's node ids."""
        self._add(log_probs[None], tokens[None], [0], parent_scores=torch.zeros(1, device=log_probs.device))
        return list(range(1, len(self.tokens) + 1))

    def add_level(self, frontier: list[int], log_probs: torch.Tensor, tokens: torch.Tensor) -> tuple[list[int], torch.Tensor]:
        """Children of the frontier nodes (row r of log_probs/tokens [f, k] belongs to frontier[r]).

        Returns the next frontier (the top_k new nodes by cumulative score, best first) and, for
        each of them, the row of its parent in this level's input (what the caller feeds next).
        """
        parent_scores = torch.tensor([self.scores[n - 1] for n in frontier], device=log_probs.device)
        first_child = len(self.tokens) + 1
        cumulative = self._add(log_probs, tokens, frontier, parent_scores)
        best = cumulative.flatten().topk(min(self.top_k, cumulative.numel())).indices
        return [first_child + int(i) for i in best], best // log_probs.shape[1]

    def _add(self, log_probs, tokens, parents: list[int], parent_scores: torch.Tensor):
        cumulative = parent_scores[:, None] + log_probs.float()
        for row, parent in enumerate(parents):
            for token in tokens[row].tolist():
                self.tokens.append(token)
                self.parents.append(parent)
                self.ancestors.append(self.ancestors[parent] | ({parent} if parent else set()))
        self.scores += cumulative.flatten().tolist()
        return cumulative

    def select(self, draft_nodes: int) -> DraftTree:
        """The draft_nodes best nodes (ancestors included), in creation order."""
        order = sorted(range(1, len(self.tokens) + 1), key=lambda n: -self.scores[n - 1])
        chosen = set(order[:draft_nodes])
        for node in list(chosen):
            chosen |= self.ancestors[node]  # only on score ties: keeps the tree connected
        kept = sorted(chosen)  # creation order: parents before children
        index = {0: 0, **{node: i for i, node in enumerate(kept, start=1)}}
        return DraftTree(torch.tensor([self.tokens[n - 1] for n in kept]), [index[self.parents[n - 1]] for n in kept])
