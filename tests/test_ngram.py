"""The `ngram` method (prompt lookup): HF's proposals on text, image tokens kept out, trees, lossless decoding."""

import random
import time
from types import SimpleNamespace

import pytest
import torch
from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

from conftest import GREEDY, easyvqa_samples, mean_tau, prepared, tiny_by_name, two_image_messages
from methods.ngram import NgramOptions, NgramProposer
from vispec_bench.engine.decode import decode
from vispec_bench.engine.proposer import EmittedIds
from vispec_bench.errors import InputError
from vispec_bench.plugins.method import make_method

IMG = 99
EOS = 0


def started(prompt_ids, eos=(EOS,), image=None, **options):
    proposer = NgramProposer(NgramOptions(**options), list(eos), image)
    proposer.start(None, SimpleNamespace(input_ids=torch.tensor(prompt_ids)), None, None)
    return proposer


def proposal(proposer, emitted, budget=10**6):
    tree = proposer.propose(EmittedIds(list(emitted)), budget)
    return [] if tree is None else tree.tokens.tolist()


def hf_proposal(context, eos=(EOS,), max_ngram=2, num_draft=10):
    generator = PromptLookupCandidateGenerator(eos_token_id=torch.tensor(list(eos)) if eos else None,
                                               num_output_tokens=num_draft, max_matching_ngram_size=max_ngram,
                                               max_length=10**6)
    candidates, _ = generator.get_candidates(torch.tensor([context]))
    return candidates[0, len(context):].tolist()


def paths(tree):
    """Every root-to-leaf token path of a DraftTree."""
    tokens = tree.tokens.tolist()
    leaves = [node for node in range(1, tree.num_nodes) if not tree.children[node]]
    out = []
    for leaf in leaves:
        path, node = [], leaf
        while node:
            path.append(tokens[node - 1])
            node = tree.parents[node - 1]
        out.append(path[::-1])
    return out


# --- peer check: HF's PromptLookupCandidateGenerator on the same contexts ----------------------

FIXED_CONTEXTS = [
    # (context, prompt length): the proposer sees the prompt at start and the rest as emitted ids
    ([5, 6, 7, 8, 9, 5, 6, 7, 10, 11, 5, 6], 8),  # 2-gram (5, 6): earliest occurrence wins
    ([1, 2, 3, 4, 2, 3, 9, 9, 9, 4, 2], 5),  # longest suffix first: (4, 2) beats (2,)
    ([1, 2, 3, 1, 2, 0, 7, 8, 1, 2], 7),  # continuation cut before EOS
    ([1, 2, 0, 5, 1, 2], 4),  # first match continues with EOS at once: no draft (HF's rule)
    ([3, 3, 3, 3, 3], 2),  # a repeat: the continuation runs up to the end of the context
    ([4, 5, 6, 7], 2),  # no match at all
    ([7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 1], 13),  # num_draft caps the draft
]


@pytest.mark.parametrize("max_ngram,num_draft", [(2, 10), (3, 4), (1, 6)])
def test_proposals_equal_hf_prompt_lookup_on_fixed_contexts(max_ngram, num_draft):
    cases = list(FIXED_CONTEXTS)
    rng = random.Random(1234)
    for _ in range(60):  # seeded random contexts over small vocabularies: many matches, EOS among them
        length = rng.randint(4, 50)
        context = [rng.randrange(rng.randint(3, 8)) for _ in range(length)]
        cases.append((context, rng.randint(1, length - 1)))
    checked = drafted = 0
    for context, prompt_length in cases:
        # one proposer per context, fed the emitted ids in uneven steps, as the engine does
        proposer = started(context[:prompt_length], max_ngram=max_ngram, num_draft=num_draft)
        end = prompt_length + 1
        while end <= len(context):
            ours = proposal(proposer, context[prompt_length:end])
            assert ours == hf_proposal(context[:end], max_ngram=max_ngram, num_draft=num_draft), (context[:end])
            checked += 1
            drafted += bool(ours)
            end += 1 + (end % 3 == 0)
    assert checked > 300 and drafted > checked // 2


def test_defaults_are_hf_equivalent_and_budget_caps_the_draft():
    assert NgramOptions() == NgramOptions(max_ngram=2, min_ngram=1, num_draft=10, num_branches=1)
    proposer = started([1, 2, 3, 4, 5, 6, 7, 1])
    assert proposal(proposer, [2], budget=4) == [3, 4, 5]  # a round emits at most `budget` tokens
    assert proposal(proposer, [2], budget=1) == []


def test_min_ngram_refuses_shorter_matches():
    context = [1, 2, 3, 4, 5, 9, 2]  # only a 1-gram (2,) matches
    assert proposal(started(context[:6]), context[6:]) == [3, 4, 5, 9, 2]
    assert proposal(started(context[:6], min_ngram=2), context[6:]) == []


# --- image placeholder tokens -----------------------------------------------------------------

def test_image_tokens_never_take_part_in_a_match():
    # (1, 2) first occurs right before the image: HF would propose image tokens, we take the next occurrence
    prompt = [1, 2] + [IMG] * 20 + [3, 1, 2, 9, 8]
    emitted = [4, 1, 2]
    assert hf_proposal(prompt + emitted)[:3] == [IMG] * 3
    assert proposal(started(prompt, image=IMG), emitted) == [9, 8, 4, 1, 2]
    # a continuation stops before an image token
    assert proposal(started([5, 6, 7, IMG, IMG, 8], image=IMG), [5, 6]) == [7]
    # a suffix made of image tokens matches nothing (a run of image tokens would match everything)
    assert proposal(started([IMG] * 30, image=IMG), [IMG]) == []
    # an n-gram that spans an image token is no match: (IMG, 4) must not match; (4,) does
    assert proposal(started([7, IMG, 4, 5, 4, 6], image=IMG), [7]) == []
    assert proposal(started([IMG, 4, 5, 6, 3, 4], image=IMG), [5]) == [6, 3, 4, 5]


def _reference(context, image, max_ngram, min_ngram, num_draft):
    """The rule, re-derived by brute force: longest n first, earliest occurrence whose n-gram and
    next token hold no image token; the continuation stops before an image or EOS token."""
    length = len(context)
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        suffix = context[length - n:]
        if image in suffix:
            continue
        for begin in range(length - n):
            window = context[begin:begin + n]
            if window == suffix and image not in window and context[begin + n] != image:
                follow = []
                for token in context[begin + n:begin + n + num_draft]:
                    if token in (image, EOS):
                        break
                    follow.append(token)
                return follow
    return []


def test_random_contexts_with_image_spans_follow_the_rule():
    rng = random.Random(7)
    for _ in range(80):
        prompt = [rng.randrange(6) for _ in range(rng.randint(0, 10))]
        for _ in range(rng.randint(1, 2)):
            prompt += [IMG] * rng.randint(1, 12) + [rng.randrange(6) for _ in range(rng.randint(1, 10))]
        generated = [rng.randrange(6) for _ in range(30)]
        proposer = started(prompt, image=IMG, max_ngram=3, num_draft=5)
        for end in range(1, len(generated) + 1):
            ours = proposal(proposer, generated[:end])
            assert IMG not in ours
            assert ours == _reference(prompt + generated[:end], IMG, 3, 1, 5)


# --- the tree option --------------------------------------------------------------------------

def test_branches_are_distinct_continuations_sharing_prefixes():
    #            (1, 2) occurs four times, followed by 3 4 | 3 5 | 6 | 3 4 (a repeat)
    prompt = [1, 2, 3, 4, 9, 1, 2, 3, 5, 9, 1, 2, 6, 9, 1, 2, 3, 4, 9]
    emitted = [7, 1, 2]
    chain = proposal(started(prompt, num_draft=3), emitted)
    assert chain == [3, 4, 9]
    tree = started(prompt, num_draft=3, num_branches=3).propose(EmittedIds(emitted), 100)
    assert paths(tree) == [[3, 4, 9], [3, 5, 9], [6, 9, 1]]  # the chain first; the repeat adds nothing
    assert tree.num_nodes == 1 + 3 + 2 + 3  # 3 shared by two branches
    for node in range(tree.num_nodes):
        child_tokens = [tree.tokens[c - 1].item() for c in tree.children[node]]
        assert len(child_tokens) == len(set(child_tokens))  # siblings differ: a trie
    # asking for more branches than there are distinct continuations gives all of them, once each
    more = started(prompt, num_draft=3, num_branches=8).propose(EmittedIds(emitted), 100)
    assert paths(more) == paths(tree)


def test_shorter_ngrams_supply_branches_once_the_longest_is_used_up():
    prompt = [1, 2, 3, 4, 5, 2, 6, 7]  # (1, 2) occurs once; (2,) once more, with another continuation
    assert proposal(started(prompt, num_draft=3), [1, 2]) == [3, 4, 5]
    tree = started(prompt, num_draft=3, num_branches=2).propose(EmittedIds([1, 2]), 100)
    assert paths(tree) == [[3, 4, 5], [6, 7, 1]]


def test_tree_depth_respects_the_budget():
    prompt = [1, 2, 3, 4, 5, 6, 1, 2, 7, 8, 9, 10]
    tree = started(prompt, num_branches=2).propose(EmittedIds([1, 2]), 3)
    assert paths(tree) == [[3, 4], [7, 8]]


# --- lossless on the tiny VLMs ----------------------------------------------------------------

CONFIGS = [{}, {"max_ngram": 3, "num_draft": 4}, {"num_branches": 3, "num_draft": 5}]


class Recording(NgramProposer):
    """Keeps every tree it proposes."""

    def __init__(self, inner):
        self.__dict__.update(inner.__dict__)
        self.trees = []

    def propose(self, emitted, budget):
        tree = super().propose(emitted, budget)
        self.trees.append(tree)
        return tree


def test_ngram_matches_ar_exactly_on_every_tiny_vlm(tiny):
    _, adapter = tiny
    drafted = accepted = 0
    for options in CONFIGS:
        method = prepared("ngram", adapter, **options)
        for sample in easyvqa_samples():
            prompt = adapter.build_prompt(sample.messages, sample.images)
            ar = decode(adapter, prompt, None, 40, GREEDY)
            proposer = Recording(method.make_proposer(adapter, None))
            result = decode(adapter, prompt, proposer, 40, GREEDY)
            assert result.new_ids == ar.new_ids, options
            drafted += sum(depth > 0 for depth in result.draft_depths)
            accepted += sum(length > 1 for length in result.accepted_lengths)
            assert all(adapter.image_token_id not in tree.tokens.tolist() for tree in proposer.trees if tree is not None)
    assert drafted > 0 and accepted > 0  # it proposed, and some proposals were right


# tiny-llava-next is left out: it repeats one token, so every occurrence has the same continuation
@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen25vl"])
def test_branching_trees_are_verified_losslessly(name):
    _, adapter = tiny_by_name(name)
    method = prepared("ngram", adapter, num_branches=3, num_draft=5)
    branched = 0
    for sample in easyvqa_samples():
        prompt = adapter.build_prompt(sample.messages, sample.images)
        proposer = Recording(method.make_proposer(adapter, None))
        result = decode(adapter, prompt, proposer, 40, GREEDY)
        assert result.new_ids == decode(adapter, prompt, None, 40, GREEDY).new_ids
        branched += sum(len(paths(tree)) > 1 for tree in proposer.trees if tree is not None)
    assert branched > 0  # trees with several branches were verified, not only chains


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-llava-next", "tiny-qwen25vl"])
def test_ngram_matches_ar_on_two_image_prompts(name):
    _, adapter = tiny_by_name(name)
    images = [s.images[0] for s in easyvqa_samples()[:2]]
    prompt = adapter.build_prompt(two_image_messages(), images)
    assert len(prompt.image_spans) == 2
    ar = decode(adapter, prompt, None, 32, GREEDY)
    for options in CONFIGS:
        result = decode(adapter, prompt, prepared("ngram", adapter, **options).make_proposer(adapter, None), 32,
                        GREEDY)
        assert result.new_ids == ar.new_ids, options
        assert mean_tau([result]) > 1  # some proposals were accepted


# --- options and cost -------------------------------------------------------------------------

@pytest.mark.parametrize("raw,message", [
    ({"min_ngram": "0"}, "min_ngram must be >= 1"),
    ({"max_ngram": "1", "min_ngram": "2"}, "max_ngram must be >= min_ngram"),
    ({"num_draft": "0"}, "num_draft must be >= 1"),
    ({"num_branches": "-1"}, "num_branches must be >= 1"),
    ({"ngram_size": "3"}, "unknown option 'ngram_size'"),
    ({"num_draft": "ten"}, "num_draft expects int"),
])
def test_bad_options_give_a_clear_error(raw, message):
    with pytest.raises(InputError, match=message):
        make_method("ngram", raw)


def test_propose_costs_well_under_a_millisecond_on_a_300_token_context():
    rng = random.Random(0)
    prompt = [rng.randrange(60) for _ in range(60)] + [IMG] * 576 + [rng.randrange(60) for _ in range(40)]
    generated = [rng.randrange(60) for _ in range(300)]
    for branches in (1, 4):
        proposer = started(prompt, image=IMG, num_branches=branches)
        costs = []
        for end in range(1, len(generated) + 1):
            emitted = EmittedIds(generated[:end])
            start = time.perf_counter()
            proposer.propose(emitted, 100)
            costs.append(time.perf_counter() - start)
        costs.sort()
        assert costs[len(costs) // 2] < 0.15e-3, (branches, costs[len(costs) // 2])  # measured ~20-40 us; a torch search per round ~300 us


# --- the benchmark script's bookkeeping (reports/ngram_vs_hf.py; its run is the lead's) ----------

def test_benchmark_summary_counts_forwards_ids_and_ratios(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "reports" / "ngram_vs_hf.py"
    spec = importlib.util.spec_from_file_location("ngram_vs_hf", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def arm(ids, forwards, wall):
        return {"ids": ids, "tokens": len(ids), "forwards": forwards, "wall_s": wall}

    rows = [{"arms": {"ours-ar": arm([1, 2, 3, 4], 4, 4.0), "ours-ngram": arm([1, 2, 3, 4], 2, 2.0),
                      "hf-lookup": arm([1, 2, 3, 4], 2, 4.0), "hf-greedy": arm([1, 2, 3, 4], 4, 4.0)}},
            {"arms": {"ours-ar": arm([5, 6], 2, 2.0), "ours-ngram": arm([5, 6], 2, 2.0),
                      "hf-lookup": arm([5, 7], 1, 2.0), "hf-greedy": arm([5, 6], 2, 2.0)}}]
    summary = bench.summarise(rows)
    assert summary["arms"]["ours-ngram"]["tau"] == 6 / 4 and summary["arms"]["hf-lookup"]["tau"] == 6 / 3
    assert summary["ratios"]["ours-ngram / hf-lookup"]["speed"] == (6 / 4) / (6 / 6)
    assert summary["checks"]["ours-ngram = hf-lookup"] == 1 and summary["checks"]["ours-ar = hf-greedy"] == 2
    assert summary["checks"]["same forwards, ours-ngram and hf-lookup"] == 1
    settings = {"command": "x", "model": "m", "dtype": "float32", "seed": 0, "max_new_tokens": 4, "num_draft": 10,
                "max_ngram": 2, "warmup": 1}
    environment = {"device_name": "cpu", "packages": {"torch": "t", "transformers": "t"}, "git": {}}
    bench.write_markdown(tmp_path / "README.md", summary, settings, environment)
    text = (tmp_path / "README.md").read_text()
    assert "| ours-ngram / hf-lookup | 1.500 |" in text and "same number of target forwards on 1/2" in text
