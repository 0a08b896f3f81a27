"""The tensor versions of the tree code against plain Python references (the loops they replaced),
on random trees, scores with many exact ties, and duplicate sibling tokens."""

import pytest
import torch

from methods.eagle2 import Eagle2Proposer
from vispec_bench.drafts.dynamic_tree import DynamicTree
from vispec_bench.drafts.tree_settings import TreeSettings
from vispec_bench.engine.acceptance import SamplingConfig, accept
from vispec_bench.engine.draft_tree import DraftTree, parents_from_mask


class ReferenceDynamicTree:
    """The earlier DynamicTree: Python lists and per-node ancestor sets."""

    def __init__(self, top_k):
        self.top_k = top_k
        self.tokens, self.parents, self.scores, self.ancestors = [], [], [], [set()]

    def add_root_children(self, log_probs, tokens):
        self._add(log_probs[None], tokens[None], [0], torch.zeros(1))
        return list(range(1, len(self.tokens) + 1))

    def add_level(self, frontier, log_probs, tokens):
        parent_scores = torch.tensor([self.scores[n - 1] for n in frontier])
        first_child = len(self.tokens) + 1
        cumulative = self._add(log_probs, tokens, frontier, parent_scores)
        best = cumulative.flatten().topk(min(self.top_k, cumulative.numel())).indices
        return [first_child + int(i) for i in best], best // log_probs.shape[1]

    def _add(self, log_probs, tokens, parents, parent_scores):
        cumulative = parent_scores[:, None] + log_probs.float()
        for row, parent in enumerate(parents):
            for token in tokens[row].tolist():
                self.tokens.append(token)
                self.parents.append(parent)
                self.ancestors.append(self.ancestors[parent] | ({parent} if parent else set()))
        self.scores += cumulative.flatten().tolist()
        return cumulative

    def select(self, draft_nodes):
        order = sorted(range(1, len(self.tokens) + 1), key=lambda n: -self.scores[n - 1])
        chosen = set(order[:draft_nodes])
        for node in list(chosen):
            chosen |= self.ancestors[node]
        kept = sorted(chosen)
        index = {0: 0, **{node: i for i, node in enumerate(kept, start=1)}}
        return [self.tokens[n - 1] for n in kept], [index[self.parents[n - 1]] for n in kept]


def loop_ancestor_mask(parents):
    mask = torch.eye(len(parents) + 1, dtype=torch.bool)
    for node, parent in enumerate(parents, start=1):
        mask[node] |= mask[parent]
    return mask


def loop_depths(parents):
    depths = [0]
    for parent in parents:
        depths.append(depths[parent] + 1)
    return depths


def loop_greedy(logits, tree):
    """The earlier greedy walk: the first child (node order) carrying the argmax, until none does."""
    tokens, choice = tree.tokens.tolist(), logits.argmax(dim=-1).tolist()
    children = [[] for _ in range(tree.num_nodes)]
    for node, parent in enumerate(tree.parents, start=1):
        children[parent].append(node)
    path = [0]
    while True:
        match = next((c for c in children[path[-1]] if tokens[c - 1] == choice[path[-1]]), None)
        if match is None:
            return path, choice[path[-1]]
        path.append(match)


def random_parents(generator, num_draft):
    return [int(torch.randint(0, i, (), generator=generator)) for i in range(1, num_draft + 1)]


def level_inputs(generator, rows, k, vocab, ties):
    """(log-probabilities [rows, k] best first, tokens [rows, k]); ties: few distinct values."""
    if ties:  # positive values too, so a child can outscore its parent (the ancestors are added then)
        log_probs = (torch.randint(0, 3, (rows, k), generator=generator).float() - 1) * 0.5
    else:
        log_probs = torch.log_softmax(torch.randn(rows, vocab, generator=generator), -1)[:, :k]
    return log_probs.sort(dim=-1, descending=True).values, torch.randint(0, vocab, (rows, k), generator=generator)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_dynamic_tree_selects_what_the_python_tree_selected(seed, ties):
    generator = torch.Generator().manual_seed(seed)
    k, levels = int(torch.randint(1, 5, (), generator=generator)), int(torch.randint(1, 5, (), generator=generator))
    new, old = DynamicTree(k), ReferenceDynamicTree(k)
    log_probs, tokens = level_inputs(generator, 1, k, 50, ties)
    frontier, old_frontier = new.add_root_children(log_probs[0], tokens[0]), old.add_root_children(log_probs[0],
                                                                                                  tokens[0])
    for _ in range(levels - 1):
        assert frontier.tolist() == old_frontier
        log_probs, tokens = level_inputs(generator, len(old_frontier), k, 50, ties)
        (frontier, rows), (old_frontier, old_rows) = new.add_level(frontier, log_probs, tokens), old.add_level(
            old_frontier, log_probs, tokens)
        assert rows.tolist() == old_rows.tolist()
    for draft_nodes in (1, 3, 7, 1000):
        tree = new.select(draft_nodes)
        assert (tree.tokens.tolist(), tree.parents) == old.select(draft_nodes)
        assert torch.equal(tree.ancestor_mask(), loop_ancestor_mask(tree.parents))
        assert tree.depths == loop_depths(tree.parents)


def test_select_adds_ancestors_on_ties_in_creation_order():
    tree = DynamicTree(2)
    frontier = tree.add_root_children(torch.tensor([0.0, -1.0]), torch.tensor([10, 11]))
    tree.add_level(frontier, torch.tensor([[0.0, -1.0], [-1.0, -1.0]]), torch.tensor([[12, 13], [14, 15]]))
    # scores: 1:0, 2:-1, 3:0 (under 1), 4:-1, 5:-2, 6:-2; the best two are 1 and 3.
    selected = tree.select(2)
    assert (selected.tokens.tolist(), selected.parents) == ([10, 12], [0, 1])
    # Best three: 1, 3 and (ties at -1 go to the earlier node) 2.
    selected = tree.select(3)
    assert (selected.tokens.tolist(), selected.parents) == ([10, 11, 12], [0, 0, 1])


def test_select_adds_the_ancestors_of_a_child_that_outscores_them():
    tree = DynamicTree(2)
    frontier = tree.add_root_children(torch.tensor([0.0, -5.0]), torch.tensor([10, 11]))
    tree.add_level(frontier[1:], torch.tensor([[10.0, -1.0]]), torch.tensor([[12, 13]]))
    selected = tree.select(1)  # node 3 (score 5) alone is best; its parent, node 2, joins it
    assert (selected.tokens.tolist(), selected.parents) == ([11, 12], [0, 1])
    assert selected.depths == [0, 1, 2]


@pytest.mark.parametrize("seed", range(20))
def test_ancestor_mask_depths_and_parents_equal_the_node_loops(seed):
    generator = torch.Generator().manual_seed(seed)
    parents = random_parents(generator, int(torch.randint(0, 70, (), generator=generator)))
    tree = DraftTree(torch.zeros(len(parents), dtype=torch.long), parents)
    assert torch.equal(tree.ancestor_mask(), loop_ancestor_mask(parents))
    assert tree.depths == loop_depths(parents)
    assert parents_from_mask(tree.ancestor_mask()).tolist() == parents


def test_a_chain_needs_every_doubling_step():
    parents = list(range(40))  # depth 40
    assert torch.equal(DraftTree(torch.zeros(40, dtype=torch.long), parents).ancestor_mask(),
                       loop_ancestor_mask(parents))


@pytest.mark.parametrize("seed", range(40))
def test_vectorised_greedy_acceptance_equals_the_walk(seed):
    generator = torch.Generator().manual_seed(seed)
    vocab = 3  # small: many matches, duplicate siblings (the first one in node order must win)
    parents = random_parents(generator, int(torch.randint(1, 40, (), generator=generator)))
    tree = DraftTree(torch.randint(0, vocab, (len(parents),), generator=generator), parents)
    logits = torch.randn(tree.num_nodes, vocab, generator=generator)
    assert accept(logits, tree, SamplingConfig(), None) == loop_greedy(logits, tree)


def test_greedy_takes_the_first_matching_child_even_when_a_later_one_goes_deeper():
    logits = torch.full((5, 4), -5.0)
    logits[0, 1] = 5  # root wants 1: nodes 1 and 2 both carry it
    logits[1, 0] = 5  # node 1 wants 0: no child of node 1 carries it
    logits[2, 3] = 5  # node 2 wants 3: node 3 carries it
    logits[3, 2] = 5
    logits[4, 2] = 5
    tree = DraftTree(torch.tensor([1, 1, 3, 2]), [0, 0, 2, 3])
    assert accept(logits, tree, SamplingConfig(), None) == ([0, 1], 0)


def test_truncated_tree_keeps_a_consistent_mask_and_depths():
    generator = torch.Generator().manual_seed(0)
    tree = DynamicTree(3)
    log_probs, tokens = level_inputs(generator, 1, 3, 20, False)
    frontier = tree.add_root_children(log_probs[0], tokens[0])
    for _ in range(3):
        log_probs, tokens = level_inputs(generator, len(frontier), 3, 20, False)
        frontier, _ = tree.add_level(frontier, log_probs, tokens)
    selected = tree.select(40)
    assert selected.max_depth == 4
    cut = selected.truncated(2)
    assert cut.max_depth == 2 and cut.num_nodes < selected.num_nodes
    assert torch.equal(cut.ancestor_mask(), loop_ancestor_mask(cut.parents))
    assert cut.depths == loop_depths(cut.parents)


class RecordingProposer(Eagle2Proposer):
    """_grow_tree alone: random draft outputs, and the visible mask of every level recorded."""

    def __init__(self, top_k, hidden=4, vocab=30, seed=0):
        self.tree = TreeSettings(depth=4, top_k=top_k, total_token=12)
        self.device, self.next_position = torch.device("cpu"), 7
        self.generator = torch.Generator().manual_seed(seed)
        self.hidden, self.vocab, self.visible = hidden, vocab, []
        self.embed = lambda tokens: tokens.float()[:, None].expand(-1, hidden)

    def _run(self, features, token_embeds, positions, visible):
        self.visible.append(visible)
        return torch.randn(features.shape[0], self.hidden, generator=self.generator)

    def _top(self, hidden, k):
        log_probs = torch.log_softmax(torch.randn(*hidden.shape[:-1], self.vocab, generator=self.generator), -1)
        return log_probs.topk(k)


@pytest.mark.parametrize("top_k", [1, 3])
def test_draft_attends_to_the_positions_the_node_loops_gave(top_k):
    proposer = RecordingProposer(top_k)
    committed = 5
    proposer._grow_tree(torch.randn(proposer.hidden), committed, levels=4)
    # The same levels through the Python tree, with the earlier double loop.
    replay = RecordingProposer(top_k)
    reference = ReferenceDynamicTree(top_k)
    frontier = reference.add_root_children(*replay._top(torch.randn(replay.hidden), top_k))
    appended = []
    for level, visible in enumerate(proposer.visible, start=2):
        expected = torch.zeros(len(frontier), committed + len(appended) + len(frontier), dtype=torch.bool)
        expected[:, :committed] = True
        for row, node in enumerate(frontier):
            for col, other in enumerate(appended):
                expected[row, committed + col] = other in reference.ancestors[node]
            expected[row, committed + len(appended) + row] = True
        assert torch.equal(visible, expected), f"level {level}"
        out = torch.randn(len(frontier), replay.hidden, generator=replay.generator)
        appended += frontier
        frontier, _ = reference.add_level(frontier, *replay._top(out, top_k))
    assert len(proposer.visible) == 3


class HostReads:
    """Counts what would make the host wait for the device: reading a tensor's values back
    (tolist, item, int/float/bool/index of a tensor, numpy) and building one from host values."""

    READS = ("tolist", "item", "__int__", "__float__", "__bool__", "__index__", "numpy")

    def __init__(self, monkeypatch):
        self.calls = []
        for name in self.READS:
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, getattr(torch.Tensor, name)))
        monkeypatch.setattr(torch, "tensor", self._counting("torch.tensor", torch.tensor))

    def _counting(self, name, function):
        def call(*args, **kwargs):
            self.calls.append(name)
            return function(*args, **kwargs)

        return call


def test_growing_a_tree_reads_the_device_once_and_greedy_acceptance_once(monkeypatch):
    proposer = RecordingProposer(top_k=3)
    root = torch.randn(proposer.hidden)
    reads = HostReads(monkeypatch)
    tree = proposer._grow_tree(root, 5, levels=4)
    assert reads.calls == ["tolist"]  # select's one read of the kept structure
    logits = torch.randn(tree.num_nodes, 30)
    reads.calls.clear()
    accept(logits, tree, SamplingConfig(), None)
    assert reads.calls == ["tolist"]
