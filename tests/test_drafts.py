"""EAGLE-2 and Medusa: lossless on every tiny VLM, trainable, and their checkpoints load safely."""

import json
import math
import shutil
from collections import Counter

import pytest
import torch

import vispec_bench.engine.decode as engine_module
from conftest import (_WORK, GREEDY, TINY_MODELS, decode_all, easyvqa_samples, mean_tau, prepared, tiny_by_name,
                      trained_draft, two_image_messages)
from methods.eagle2 import additive_mask, causal_visible
from methods.medusa import default_tree
from vispec_bench.engine.acceptance import SamplingConfig, accept, target_probs
from vispec_bench.drafts.checkpoints import DraftCheckpointError
from vispec_bench.cli import main
from vispec_bench.engine.decode import decode
from vispec_bench.drafts.training import TrainConfig, train
@pytest.mark.parametrize("model", TINY_MODELS)
@pytest.mark.parametrize("method", ["eagle2", "medusa"])
def test_random_and_trained_drafts_reproduce_ar_in_float32(model, method):
    _, adapter = tiny_by_name(model)
    samples = easyvqa_samples(limit=3)
    ar = decode_all(adapter, None, samples)
    random_draft = decode_all(adapter, prepared(method, adapter, draft="random"), samples)
    trained = decode_all(adapter, prepared(method, adapter, draft=trained_draft(model, method)), samples)
    assert [r.new_ids for r in random_draft] == [r.new_ids for r in ar]
    assert [r.new_ids for r in trained] == [r.new_ids for r in ar]
    # Training raises tau above the random draft's, and the logged held-out accuracy rises.
    assert mean_tau(trained) > mean_tau(random_draft)
    log = [json.loads(line) for line in (trained_draft(model, method) / "train_log.jsonl").read_text().splitlines()]
    first_key = "acc_depth1" if method == "eagle2" else "acc_head0"
    assert log[-1][first_key] > log[0][first_key]


@pytest.mark.parametrize("method", ["eagle2", "medusa"])
def test_drafts_reproduce_ar_on_a_two_image_prompt(method):
    for model in ("tiny-llava-next", "tiny-qwen25vl"):
        _, adapter = tiny_by_name(model)
        images = [s.images[0] for s in easyvqa_samples()[:2]]
        prompt = adapter.build_prompt(two_image_messages(), images)
        ar = decode(adapter, prompt, None, 30, GREEDY)
        built = prepared(method, adapter, draft=trained_draft(model, method))
        assert decode(adapter, prompt, built.make_proposer(adapter, None), 30, GREEDY).new_ids == ar.new_ids


def test_eagle2_tree_respects_depth_top_k_and_total_token():
    _, adapter = tiny_by_name("tiny-llava")
    # Reference convention: depth 3 = up to 4 levels; total_token 11 counts the root = 10 draft nodes.
    built = prepared("eagle2", adapter, draft="random", depth=3, top_k=3, total_token=11)
    sample = easyvqa_samples()[0]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    prefill = adapter.prefill(prompt)
    proposer = built.make_proposer(adapter, None)
    proposer.start(adapter, prompt, prefill, int(prefill.logits.argmax()))
    tree = proposer.propose([int(prefill.logits.argmax())], budget=100)
    assert tree.num_nodes - 1 == 10 and tree.max_depth <= 4
    assert all(len(children) <= 3 for children in tree.children)
    # The draft cache holds only committed pairs after proposing (tree nodes were cropped).
    assert proposer.cache.get_seq_length() == prompt.input_ids.shape[0]


def test_eagle2_draft_cache_across_rounds_equals_recomputing_from_scratch():
    """Each round's root feature, computed incrementally on the draft KV cache kept across
    rounds (tree nodes appended and cropped in between), equals a from-scratch causal pass of
    the draft over every committed pair."""
    _, adapter = tiny_by_name("tiny-qwen25vl")
    built = prepared("eagle2", adapter, draft=trained_draft("tiny-qwen25vl", "eagle2"))
    sample = easyvqa_samples()[1]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    proposer = built.make_proposer(adapter, None)
    blocks, roots = [], []
    grow = proposer._grow_tree

    def recording_grow(root_feature, committed, levels):
        blocks.append(proposer.pending)  # the committed pairs this round started with
        roots.append(root_feature.clone())
        return grow(root_feature, committed, levels)

    proposer._grow_tree = recording_grow
    result = decode(adapter, prompt, proposer, 25, GREEDY)
    assert max(result.accepted_lengths) > 1  # several rounds with accepted drafts
    features, embeds, positions = (torch.cat([b[i] for b in blocks]) for i in range(3))
    assert positions.tolist() == list(range(positions.shape[0]))  # EAGLE-2: contiguous positions
    full = built.draft(features[None], embeds[None], positions[None],
                       additive_mask(causal_visible(positions.shape[0], 0, adapter.device), adapter.dtype))[0]
    block_ends = torch.tensor([b[2][-1] for b in blocks])
    assert torch.allclose(torch.stack(roots), full[block_ends], atol=1e-5)


def test_medusa_default_tree_is_prefix_closed_with_63_nodes():
    paths = default_tree(5, 63, 10)
    assert len(paths) == 63 and len(set(paths)) == 63
    assert all(p[:-1] in set(paths) for p in paths if len(p) > 1)
    assert max(len(p) for p in paths) <= 5


def test_medusa_typical_acceptance_is_labelled_lossy(tmp_path):
    args = ["run", "--model", "tiny-llava", "--methods", "medusa", "--method-args", "medusa.draft=random",
            "medusa.typical=true", "--limit", "2", "--max-new-tokens", "16", "--dtype", "float32", "--device", "cpu",
            "--out", str(tmp_path), "--run-id", "typ", "--no-progress"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "typ" / "summary.json").read_text())
    assert summary["methods"]["medusa"]["lossless"] is False
    assert summary["methods"]["ar"]["lossless"] is True


def test_issue_command_random_drafts_exact_match(tmp_path):
    args = ["run", "--model", "tiny-llava", "--methods", "eagle2,medusa", "--method-args", "eagle2.draft=random",
            "medusa.draft=random", "--suite", "easyvqa", "--limit", "2", "--max-new-tokens", "16", "--dtype",
            "float32", "--device", "cpu", "--out", str(tmp_path), "--run-id", "rnd", "--no-progress"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "rnd" / "summary.json").read_text())
    assert summary["methods"]["eagle2"]["exact_match_rate"] == 1.0
    assert summary["methods"]["medusa"]["exact_match_rate"] == 1.0


# --- sampling: the method's output distribution is the target's ------------------------------

def _draws(adapter, prompt, method, sampling, num_draws):
    """(x1, x2) of seeded draws; x2 is None when x1 was EOS. x2 is the first token a draft proposes."""
    pairs = []
    for seed in range(num_draws):
        ids = decode(adapter, prompt, method.make_proposer(adapter, None) if method else None, 3, sampling,
                     seed=seed).new_ids
        pairs.append((ids[0], ids[1] if len(ids) > 1 else None))
    return pairs


class ExactTarget:
    """The target's exact first- and second-token distributions under a sampling config."""

    def __init__(self, adapter, prompt, sampling):
        self.adapter, self.prompt, self.sampling = adapter, prompt, sampling
        self.first = target_probs(adapter.prefill(prompt).logits, sampling)
        self._second = {}

    def second(self, first_token):
        if first_token not in self._second:
            logits = self.adapter.teacher_forced_logits(self.prompt, [first_token])[1]
            self._second[first_token] = target_probs(logits, self.sampling)
        return self._second[first_token]

    def marginal_second(self):
        """P(x2) summed over every x1; the extra last entry is P(x1 is EOS)."""
        marginal = torch.zeros(self.first.shape[0] + 1)
        for token in self.first.nonzero().flatten().tolist():
            if token in self.adapter.eos_token_ids:
                marginal[-1] += self.first[token]
            else:
                marginal[:-1] += self.first[token] * self.second(token)
        return marginal


def _chi_square_p(counts: Counter, probs: torch.Tensor, total: int) -> float:
    """Pearson goodness of fit, bins with expected count < 5 pooled; Wilson-Hilferty p-value.
    A draw on a token of probability 0 gives p = 0."""
    if any(probs[token] == 0 for token in counts):
        return 0.0
    expected = probs * total
    big = (expected >= 5).nonzero().flatten().tolist()
    observed = [counts.get(t, 0) for t in big] + [total - sum(counts.get(t, 0) for t in big)]
    expect = [float(expected[t]) for t in big] + [total - float(expected[big].sum())]
    pairs = [(o, e) for o, e in zip(observed, expect) if e > 1e-9]
    stat = sum((o - e) ** 2 / e for o, e in pairs)
    dof = max(1, len(pairs) - 1)
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


def _log_likelihood_z(pairs, exact: ExactTarget) -> float:
    """z-score of sum log P(x2 | x1) against its exact mean and variance under the target:
    a sampler that is too flat (temperature ignored) or too sharp moves it far from 0."""
    total, mean, variance = 0.0, 0.0, 0.0
    for first, second in pairs:
        if second is None:
            continue
        probs = exact.second(first)
        if probs[second] == 0:
            return float("inf")
        support = probs[probs > 0]
        log_support = support.log()
        total += float(probs[second].log())
        mean += float((support * log_support).sum())
        variance += float((support * log_support ** 2).sum()) - float((support * log_support).sum()) ** 2
    return (total - mean) / math.sqrt(variance)


def _distribution_matches(pairs, exact: ExactTarget) -> tuple[bool, float, float]:
    vocab = exact.first.shape[0]
    counts = Counter(second if second is not None else vocab for _, second in pairs)
    p_value = _chi_square_p(counts, exact.marginal_second(), len(pairs))
    z = _log_likelihood_z(pairs, exact)
    return p_value > 1e-3 and abs(z) < 3.29, p_value, z  # each check at the 0.1 % level


def broken_bonus_accept(logits, tree, config, generator):
    """A bug the reference EAGLE code once had: the bonus token ignores temperature and top-p."""
    path, _ = accept(logits, tree, config, generator)
    raw = torch.softmax(logits[path[-1]].float(), dim=-1)
    return path, int(torch.multinomial(raw, 1, generator=generator))


# ~40 s each: EAGLE-2 in the quick suite; Medusa and ViSpec (same acceptance code) behind `slow`, which CI runs too.
@pytest.mark.parametrize("method_name", ["eagle2", pytest.param("medusa", marks=pytest.mark.slow),
                                         pytest.param("vispec", marks=pytest.mark.slow)])
def test_sampling_matches_the_target_distribution_and_catches_a_broken_bonus_token(method_name, monkeypatch):
    _, adapter = tiny_by_name("tiny-llava")
    sample = easyvqa_samples()[0]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    method = prepared(method_name, adapter, draft=trained_draft("tiny-llava", method_name))
    num_draws = 400
    for sampling in (SamplingConfig(1.0), SamplingConfig(0.7, top_p=0.9)):
        exact = ExactTarget(adapter, prompt, sampling)
        ok, p_value, z = _distribution_matches(_draws(adapter, prompt, method, sampling, num_draws), exact)
        assert ok, (sampling, p_value, z)
        ok, p_value, z = _distribution_matches(_draws(adapter, prompt, None, sampling, num_draws), exact)
        assert ok, ("ar", sampling, p_value, z)
    # The same test against a verifier whose bonus token ignores temperature/top-p must fail.
    sampling = SamplingConfig(0.7, top_p=0.9)
    monkeypatch.setattr(engine_module, "accept", broken_bonus_accept)
    ok, p_value, z = _distribution_matches(_draws(adapter, prompt, method, sampling, num_draws),
                                           ExactTarget(adapter, prompt, sampling))
    assert not ok, (p_value, z)


# --- checkpoints --------------------------------------------------------------------------------

def test_draft_for_another_target_fails_with_a_clear_message(tmp_path):
    source = trained_draft("tiny-llava", "eagle2")
    copy = tmp_path / "draft"
    shutil.copytree(source, copy)
    config = json.loads((copy / "draft_config.json").read_text())
    config["target"]["hidden_size"] = 4096
    (copy / "draft_config.json").write_text(json.dumps(config))
    _, adapter = tiny_by_name("tiny-llava")
    with pytest.raises(DraftCheckpointError, match="hidden_size=4096 .* this target has hidden_size=64"):
        prepared("eagle2", adapter, draft=copy)
    _, qwen = tiny_by_name("tiny-qwen25vl")
    with pytest.raises(DraftCheckpointError, match="does not fit this draft"):
        prepared("eagle2", qwen, draft=source)  # a Llama-family layer into a Qwen2-family draft
    with pytest.raises(DraftCheckpointError, match="is a 'eagle2' draft, not a 'medusa' draft"):
        prepared("medusa", adapter, draft=source)
    with pytest.raises(DraftCheckpointError, match="does not exist"):
        prepared("eagle2", adapter, draft=tmp_path / "nope")


def test_draft_named_for_another_target_warns_and_the_record_says_which(tmp_path, capsys, monkeypatch):
    """Same shapes, another target name (the testbed's 64 and 576 settings share SmolLM2): the draft
    loads, but with a warning, and resolved_draft (which the run records) names its target. A hub id
    and a local copy of the same model ("org/model" vs ".../model") are not a mismatch."""
    source = trained_draft("tiny-llava", "eagle2")
    _, adapter = tiny_by_name("tiny-llava")
    own_name = "vispec-bench/tiny-llava"  # tiny models are unnamed: name this one for the test
    monkeypatch.setattr(adapter.model.config, "_name_or_path", own_name)

    def renamed(name, target_name):
        copy = tmp_path / name
        shutil.copytree(source, copy)
        config = json.loads((copy / "draft_config.json").read_text())
        config["target"]["name_or_path"] = target_name
        (copy / "draft_config.json").write_text(json.dumps(config))
        return copy

    capsys.readouterr()
    own = prepared("eagle2", adapter, draft=renamed("own", own_name))
    prepared("eagle2", adapter, draft=renamed("local", "/models/tiny-llava"))
    assert own.resolved_draft["trained_for"] == own_name
    assert "warning" not in capsys.readouterr().err
    other = prepared("eagle2", adapter, draft=renamed("other", "someone/another-model"))
    err = capsys.readouterr().err
    assert "warning: the eagle2 draft was trained for 'someone/another-model'" in err and repr(own_name) in err
    assert other.resolved_draft["trained_for"] == "someone/another-model"
    # the weights (sha256) decide the config hash, not the recorded name: records made before
    # trained_for existed stay comparable
    before = other.config_hash()
    other.resolved_draft.pop("trained_for")
    assert other.config_hash() == before


def test_published_eagle_layout_loads_and_drafts_identically(tmp_path):
    _, adapter = tiny_by_name("tiny-llava")
    ours = prepared("eagle2", adapter, draft=trained_draft("tiny-llava", "eagle2"))
    state = {k: v.clone() for k, v in ours.draft.state_dict().items()}
    state["embed_tokens.weight"] = adapter.embed_tokens.weight.detach().clone()  # published drafts carry one
    assert {"fc.weight", "fc.bias", "layers.0.self_attn.q_proj.weight", "layers.0.mlp.down_proj.weight",
            "layers.0.post_attention_layernorm.weight"} <= set(state)
    assert not any(k.startswith("layers.0.input_layernorm") for k in state)
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64}))
    published = prepared("eagle2", adapter, draft=tmp_path)
    samples = easyvqa_samples(limit=3)
    a = decode_all(adapter, ours, samples)
    b = decode_all(adapter, published, samples)
    assert [r.accepted_lengths for r in a] == [r.accepted_lengths for r in b]


def test_training_resumes_from_its_checkpoint(tmp_path):
    data = _WORK / "data-tiny-llava"
    trained_draft("tiny-llava", "eagle2")  # makes sure the data exists
    config = TrainConfig(method="medusa", model="tiny-llava", data=str(data), out=str(tmp_path / "ck"), steps=20,
                         save_every=10, eval_every=10, dtype="float32", device="cpu")
    train(config, progress=False, log=lambda m: None)
    state = torch.load(tmp_path / "ck" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 20 and state["train_seconds"] > 0
    with pytest.raises(FileExistsError, match="--resume"):
        train(config, progress=False, log=lambda m: None)
    # the training seconds of earlier runs carry over a resume: say the first run took 1,000 s
    torch.save({**state, "train_seconds": 1000.0}, tmp_path / "ck" / "trainer_state.pt")
    longer = TrainConfig(**{**config.__dict__, "steps": 30, "resume": True})
    train(longer, progress=False, log=lambda m: None)
    resumed = torch.load(tmp_path / "ck" / "trainer_state.pt", weights_only=True)
    assert resumed["step"] == 30 and resumed["train_seconds"] > 1000.0
    steps = [json.loads(line)["step"] for line in (tmp_path / "ck" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [0, 10, 20, 30]
