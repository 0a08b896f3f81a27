"""Golden tests: the authors' own outputs (recorded by tests/golden/make_tree_golden.py from their
code) reproduced through this package — trees identical, float32 within 1e-5."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import easyvqa_samples, prepared, tiny_by_name
from methods.eagle2 import additive_mask, causal_visible

FIXTURES = Path(__file__).parent / "golden" / "fixtures"
TREES = json.loads((FIXTURES / "trees.json").read_text())
LOGITS = load_file(str(FIXTURES / "tree_logits.safetensors"))


def started_proposer(built, adapter):
    sample = easyvqa_samples()[0]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    prefill = adapter.prefill(prompt)
    proposer = built.make_proposer(adapter, None)
    first = int(prefill.logits.argmax())
    proposer.start(adapter, prompt, prefill, first)
    return proposer, first


class FixedLevels:
    """Stands in for the draft's top-k: level l's fixed logits, row r for the r-th frontier node."""

    def __init__(self, levels):
        self.levels, self.calls = levels, 0

    def __call__(self, hidden, k):
        logits = self.levels[self.calls]
        self.calls += 1
        if hidden.dim() == 1:
            logits = logits[0]
        else:
            assert logits.shape[0] == hidden.shape[0], "one row of logits per frontier node"
        top = torch.log_softmax(logits.float(), dim=-1).topk(k)
        return top.values, top.indices


class FixedHeads(nn.Module):
    """Medusa heads whose logits [K, V] are fixed."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.blocks = [None] * logits.shape[0]
        self.token_map = None

    def forward(self, hidden, weight):
        return self.logits


@pytest.mark.parametrize("method", ["eagle2", "vispec"])
@pytest.mark.parametrize("record", TREES["eagle_trees"], ids=lambda r: r["name"])
def test_dynamic_tree_equals_the_reference_topK_genrate(method, record):
    """Same depth / top_k / total_token numbers as the reference -> the same tree, node for node."""
    _, adapter = tiny_by_name("tiny-llava")
    built = prepared(method, adapter, draft="random", depth=record["depth"], top_k=record["top_k"],
                     total_token=record["total_token"])
    proposer, first = started_proposer(built, adapter)
    fixed = FixedLevels([LOGITS[f"eagle_{record['name']}.level{i}"] for i in range(record["depth"] + 1)])
    proposer._top = fixed
    tree = proposer.propose([first], budget=100)
    assert fixed.calls == record["depth"] + 1  # every level the reference expanded, no more
    assert tree.tokens.tolist() == record["tokens"]
    assert tree.parents == record["parents"]
    assert tree.num_nodes == record["total_token"]  # total_token counts the root


@pytest.mark.parametrize("record", TREES["medusa_dynamic_trees"], ids=lambda r: r["name"])
def test_medusa_dynamic_tree_equals_the_vispec_repos_medusa_baseline(record):
    _, adapter = tiny_by_name("tiny-llava")
    built = prepared("medusa-dynamic", adapter, draft="random", top_k=record["top_k"],
                     total_token=record["total_token"])
    proposer, first = started_proposer(built, adapter)
    proposer.heads = FixedHeads(LOGITS["medusa_dynamic.heads"])
    tree = proposer.propose([first], budget=100)
    assert tree.tokens.tolist() == record["tokens"]
    assert tree.parents == record["parents"]


@pytest.mark.parametrize("record", TREES["medusa_choices"], ids=lambda r: r["name"])
def test_medusa_tree_candidates_equal_the_references_for_its_medusa_choices(record, tmp_path):
    _, adapter = tiny_by_name("tiny-llava")
    choices = tmp_path / "choices.json"
    choices.write_text(json.dumps(record["medusa_choices"]))
    heads = LOGITS[f"medusa_choices_{record['name']}.heads"]
    built = prepared("medusa", adapter, draft="random", tree=choices, num_heads=heads.shape[0])
    proposer, first = started_proposer(built, adapter)
    proposer.heads = FixedHeads(heads)
    tree = proposer.propose([first], budget=100)
    assert tree.tokens.tolist() == record["tree_candidates"][1:]  # [0] is the root (the target's own token)
    paths = [tuple(p) for p in sorted(record["medusa_choices"], key=lambda p: (len(p), p))]
    index = {p: i for i, p in enumerate(paths, start=1)}
    assert tree.parents == [index.get(p[:-1], 0) for p in paths]


CASES = sorted(p.name for p in (FIXTURES / "eagle_forward").iterdir())


@pytest.mark.parametrize("case", CASES)
def test_published_eagle_draft_forward_equals_the_reference(case):
    """Tiny random weights in the published layout (config.json + weights), loaded through the
    `draft=DIR` option: the draft's hidden states and level-1 top-k equal the authors' code's."""
    directory = FIXTURES / "eagle_forward" / case
    about = json.loads((directory / "case.json").read_text())
    io = load_file(str(directory / "reference_io.safetensors"))
    _, adapter = tiny_by_name(about["target"])
    built = prepared("eagle2", adapter, draft=directory)
    assert (built.draft.fc.bias is not None) == about["fc_bias"]
    n = io["hidden"].shape[1]
    positions = torch.arange(n)[None]
    with torch.no_grad():
        out = built.draft(io["hidden"], adapter.embed_tokens(io["input_ids"]), positions,
                          additive_mask(causal_visible(n, 0, adapter.device), adapter.dtype))
    assert (out - io["out"]).abs().max() <= 1e-5
    proposer = built.make_proposer(adapter, None)
    values, indices = proposer._top(out[0, -1], 8)
    assert indices.tolist() == io["top_indices"].tolist()
    assert (values - io["top_values"]).abs().max() <= 1e-5
