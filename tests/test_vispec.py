"""ViSpec: lossless with its vision parts on every tiny VLM; the splice and the global feature pinned."""

import json

import pytest
import torch

from conftest import (GREEDY, TINY_MODELS, decode_all, easyvqa_samples, mean_tau, prepared, tiny_by_name,
                      trained_draft, two_image_messages)
from methods.vispec import ViSpec
from vispec_bench.drafts.checkpoints import DraftCheckpointError
from vispec_bench.cli import main
from vispec_bench.engine.decode import decode
from vispec_bench.plugins.method import make_method
from vispec_bench.plugins.registry import METHODS

VISPEC_METHODS = ["vispec", "vispec-noadaptor", "vispec-noglobal"]


@pytest.mark.parametrize("model", TINY_MODELS)
def test_vispec_and_ablations_reproduce_ar_with_one_and_two_images(model):
    _, adapter = tiny_by_name(model)
    samples = easyvqa_samples(limit=3)
    ar = decode_all(adapter, None, samples)
    images = [s.images[0] for s in samples[:2]]
    two_image_prompt = adapter.build_prompt(two_image_messages(), images)
    ar_two = decode(adapter, two_image_prompt, None, 30, GREEDY).new_ids
    trained = trained_draft(model, "vispec")
    for name in VISPEC_METHODS:
        for draft in ("random", trained):  # the ablations load the trained ViSpec parameters
            method = prepared(name, adapter, draft=draft)
            assert [r.new_ids for r in decode_all(adapter, method, samples)] == [r.new_ids for r in ar], (name, draft)
            result = decode(adapter, two_image_prompt, method.make_proposer(adapter, None), 30, GREEDY)
            assert result.new_ids == ar_two, (name, draft)
    trained_tau = mean_tau(decode_all(adapter, prepared("vispec", adapter, draft=trained), samples))
    random_tau = mean_tau(decode_all(adapter, prepared("vispec", adapter, draft="random"), samples))
    assert trained_tau > random_tau


def _prefill_pairs(adapter, method, messages, images):
    prompt = adapter.build_prompt(messages, images)
    prefill = adapter.prefill(prompt)
    proposer = method.make_proposer(adapter, None)
    first = int(prefill.logits.argmax())
    features, embeds, positions = proposer.prefill_pairs(prompt, prefill, first)
    return prompt, prefill, proposer, features, embeds, positions


@pytest.mark.parametrize("num_q", [2, 3])
def test_splice_places_compressed_tokens_at_trailing_image_positions_one_image(num_q):
    _, adapter = tiny_by_name("tiny-llava")
    method = prepared("vispec", adapter, draft="random", num_q=num_q)
    sample = easyvqa_samples()[0]
    prompt, prefill, proposer, features, embeds, positions = _prefill_pairs(adapter, method, sample.messages,
                                                                            sample.images)
    (start, end), = prompt.image_spans
    length = prompt.input_ids.shape[0]
    compressed = list(range(end - num_q, end - 1))  # pair i carries token i + 1: tokens end-num_q+1 .. end-1
    expected = list(range(0, start - 1)) + compressed + list(range(end - 1, length))
    assert positions.tolist() == expected
    # The compressed tokens are the adaptor's first num_q - 1 outputs for this image's embeddings.
    adaptor_out = method.draft.imadpt(prefill.input_embeds[start:end])
    at = [expected.index(p) for p in compressed]
    assert torch.allclose(embeds[at], adaptor_out[: num_q - 1], atol=1e-6)
    # Text after the image keeps its own embeddings and its original positions (a gap before it).
    after = expected.index(end - 1)
    assert torch.equal(embeds[after], prefill.input_embeds[end])
    assert positions[after] - positions[after - 1] == 1 and positions[at[0]] - positions[at[0] - 1] == end - start - (
        num_q - 1) + 1
    # The global feature g = the adaptor's last output, fused from the first text pair after the image on.
    assert torch.allclose(proposer.global_features[0], adaptor_out[-1], atol=1e-6)
    assert proposer.fusion_starts.tolist() == [end - 1]


def test_splice_positions_for_two_images_and_the_draft_cache_is_shorter():
    _, adapter = tiny_by_name("tiny-qwen25vl")
    method = prepared("vispec", adapter, draft="random")
    with torch.no_grad():  # away from [I | 0], so that fusing with g = 0 shows too
        method.draft.img_fc.weight.add_(torch.randn(method.draft.img_fc.weight.shape) * 0.1)
    images = [s.images[0] for s in easyvqa_samples()[:2]]
    prompt, prefill, proposer, features, embeds, positions = _prefill_pairs(adapter, method, two_image_messages(),
                                                                            images)
    (s1, e1), (s2, e2) = prompt.image_spans
    length = prompt.input_ids.shape[0]
    expected = (list(range(0, s1 - 1)) + [e1 - 2] + list(range(e1 - 1, s2 - 1)) + [e2 - 2]
                + list(range(e2 - 1, length)))
    assert positions.tolist() == expected
    assert proposer.fusion_starts.tolist() == [e1 - 1, e2 - 1]
    assert proposer.global_features.shape[0] == 2
    # Each image's g goes to the text after it: position e2-1 onward uses image 2's g.
    fused = proposer.transform_features(features, positions)
    between = expected.index(e1 - 1)
    after = expected.index(e2 - 1)
    img_fc = method.draft.img_fc
    assert torch.allclose(fused[between], img_fc(torch.cat([features[between], proposer.global_features[0]])),
                          atol=1e-5)
    assert torch.allclose(fused[after], img_fc(torch.cat([features[after], proposer.global_features[1]])), atol=1e-5)
    zero = torch.zeros_like(features[0])  # before any image: fused with g = 0, as the reference
    assert torch.allclose(fused[0], img_fc(torch.cat([features[0], zero])), atol=1e-6)
    # The compressed token's row enters the decoder layer directly (no fc, no target feature).
    direct_rows = proposer.prompt_direct.nonzero().flatten().tolist()
    assert [expected[i] for i in direct_rows] == [e1 - 2, e2 - 2]
    # The draft's cache holds only the kept pairs: shorter than the target's by the spliced-out tokens.
    proposer.start(adapter, prompt, prefill, int(prefill.logits.argmax()))
    proposer.propose([int(prefill.logits.argmax())], budget=10)
    assert proposer.cache.get_seq_length() == len(expected) < length
    assert proposer.next_position == length  # decode-time pairs continue at the target's positions


def _trees(adapter, method, prompt, max_new_tokens=24):
    proposer = method.make_proposer(adapter, None)
    trees = []
    propose = proposer.propose

    def recording(emitted, budget):
        tree = propose(emitted, budget)
        trees.append(None if tree is None else (tree.tokens.tolist(), list(tree.parents)))
        return tree

    proposer.propose = recording
    decode(adapter, prompt, proposer, max_new_tokens, GREEDY)
    return trees


@pytest.mark.parametrize("model", ["tiny-llava", "tiny-qwen25vl"])
def test_eagle2_draft_loaded_into_vispec_proposes_the_same_trees(model):
    _, adapter = tiny_by_name(model)
    eagle_checkpoint = trained_draft(model, "eagle2")
    eagle = prepared("eagle2", adapter, draft=eagle_checkpoint)
    sample = easyvqa_samples()[0]
    image_prompt = adapter.build_prompt(sample.messages, sample.images)
    reference = _trees(adapter, eagle, image_prompt)
    assert any(len(t[0]) > 1 for t in reference if t)
    # img_fc starts as [I | 0]: with the splice off, the (nonzero) global feature changes nothing.
    no_adaptor = prepared("vispec-noadaptor", adapter, draft=eagle_checkpoint)
    assert _trees(adapter, no_adaptor, image_prompt) == reference
    # Because img_fc, absent from an EAGLE-2 checkpoint, is the fresh [I | 0]:
    weight = no_adaptor.draft.img_fc.weight
    hidden = weight.shape[0]
    assert torch.equal(weight[:, :hidden], torch.eye(hidden)) and not weight[:, hidden:].any()
    # Full ViSpec on a text-only prompt has no image to splice: the same trees as EAGLE-2.
    text_prompt = adapter.build_prompt([{"role": "user", "content": [{"type": "text", "text": "what is red?"}]}], [])
    assert _trees(adapter, prepared("vispec", adapter, draft=eagle_checkpoint), text_prompt) == \
        _trees(adapter, eagle, text_prompt)


def test_stage2_training_raises_heldout_accuracy_over_the_stage1_draft():
    stage1 = [json.loads(line) for line in
              (trained_draft("tiny-llava", "eagle2") / "train_log.jsonl").read_text().splitlines()][-1]
    stage2_log = [json.loads(line) for line in
                  (trained_draft("tiny-llava", "vispec") / "train_log.jsonl").read_text().splitlines()]
    config = json.loads((trained_draft("tiny-llava", "vispec") / "draft_config.json").read_text())
    assert config["training"]["init"] == str(trained_draft("tiny-llava", "eagle2"))
    depths = ("acc_depth1", "acc_depth2", "acc_depth3")
    assert sum(stage2_log[-1][d] for d in depths) > sum(stage1[d] for d in depths)
    assert stage2_log[-1]["acc_depth1"] > stage2_log[0]["acc_depth1"]


def test_issue_command_vispec_and_eagle2_random_drafts_on_qwen25vl(tmp_path):
    args = ["run", "--model", "tiny-qwen25vl", "--methods", "vispec,eagle2", "--method-args", "vispec.draft=random",
            "eagle2.draft=random", "--suite", "easyvqa", "--limit", "2", "--max-new-tokens", "16", "--dtype",
            "float32", "--device", "cpu", "--out", str(tmp_path), "--run-id", "v", "--no-progress"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert summary["methods"]["vispec"]["exact_match_rate"] == 1.0
    assert summary["methods"]["eagle2"]["exact_match_rate"] == 1.0


def test_ablations_are_registry_presets_of_the_same_method():
    for name, preset in (("vispec-noadaptor", {"adaptor": False}), ("vispec-noglobal", {"global_feature": False})):
        entry = METHODS.get(name)
        assert entry.load() is ViSpec and entry.preset == preset and entry.ablation_of == "vispec"
    no_adaptor, no_global = make_method("vispec-noadaptor", {}), make_method("vispec-noglobal", {})
    assert (no_adaptor.options.adaptor, no_adaptor.options.global_feature) == (False, True)
    assert (no_global.options.adaptor, no_global.options.global_feature) == (True, False)
    assert no_adaptor.draft_kind == no_global.draft_kind == "vispec"  # they load ViSpec's drafts
    # the preset is part of what the run records and hashes
    assert no_adaptor.describe()["preset"] == {"adaptor": False}
    assert no_adaptor.config_hash() != make_method("vispec", {}).config_hash()
    # the user's --method-args override a preset
    assert make_method("vispec-noadaptor", {"adaptor": "true"}).options.adaptor is True


def test_our_draft_saved_in_the_authors_layout_loads_with_no_key_mapping(tmp_path):
    _, adapter = tiny_by_name("tiny-llava")
    ours = prepared("vispec", adapter, draft=trained_draft("tiny-llava", "vispec"))
    state = {k: v.clone() for k, v in ours.draft.state_dict().items()}
    assert {"fc.weight", "fc.bias", "img_fc.weight", "imadpt.q", "imadpt.k_proj.weight", "imadpt.v_proj.weight",
            "imadpt.o_proj.weight", "layers.0.self_attn.q_proj.weight"} <= set(state)
    assert state["imadpt.q"].shape == (2, 4, 16) and "imadpt.k_proj.bias" not in state  # (num_q, heads, head_dim)
    state["embed_tokens.weight"] = adapter.embed_tokens.weight.detach().clone()  # the authors' drafts carry one
    torch.save(state, tmp_path / "pytorch_model.bin")
    text = adapter.text_config
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llava", "hidden_size": text.hidden_size, "intermediate_size": text.intermediate_size,
        "num_attention_heads": text.num_attention_heads, "num_key_value_heads": text.num_key_value_heads,
        "num_hidden_layers": 1, "rms_norm_eps": text.rms_norm_eps, "vocab_size": adapter.vocab_size}))
    published = prepared("vispec", adapter, draft=tmp_path)
    samples = easyvqa_samples(limit=2)
    assert [r.accepted_lengths for r in decode_all(adapter, ours, samples)] == \
        [r.accepted_lengths for r in decode_all(adapter, published, samples)]


def test_a_draft_of_the_earlier_vispec_function_is_refused_clearly(tmp_path):
    from vispec_bench.drafts.checkpoints import save_draft

    _, adapter = tiny_by_name("tiny-llava")
    method = prepared("vispec", adapter, draft="random")
    state = dict(method.draft.state_dict(), **{"imadpt.q_proj.weight": torch.zeros(64, 64)})
    save_draft(tmp_path, state, method.checkpoint_config(adapter))
    with pytest.raises(DraftCheckpointError, match="earlier ViSpec function.*retrain"):
        prepared("vispec", adapter, draft=tmp_path)


def test_a_full_model_passed_as_a_vispec_draft_is_refused(tmp_path):
    loaded, adapter = tiny_by_name("tiny-llava")
    torch.save(loaded.model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(DraftCheckpointError, match="full model checkpoint"):
        prepared("vispec", adapter, draft=tmp_path)
