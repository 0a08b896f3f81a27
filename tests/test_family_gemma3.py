"""Gemma 3 (Gemma3ForConditionalGeneration) as a target: AR equals HF generate, every lossless
method equals AR, and what the adapter does differently (bidirectional image attention at
prefill, sliding-window layers past the window, the image soft-token id) holds.

The tiny model's sliding window (24) is shorter than its prompts (~75 tokens), so every
decode here runs past it."""

import functools

import pytest
import torch
from torch import nn

from conftest import GREEDY, decode_all, easyvqa_samples, mean_tau, prepared, tiny_by_name, two_image_messages
from vispec_bench.engine.adapter import ImageTokenError, make_adapter
from vispec_bench.engine.decode import decode
from vispec_bench.engine.draft_tree import DraftTree
from vispec_bench.engine.engines import Engine
from vispec_bench.engine.gemma3 import Gemma3Adapter
from vispec_bench.models.loading import ModelLoadError, load_model
from vispec_bench.models.tiny_gemma3 import SLIDING_WINDOW, build_tiny_gemma3
from vispec_bench.plugins.method import SampleContext

MODEL = "tiny-gemma3"
MAX_NEW = 40


def hf_generate(model, prompt, max_new_tokens=MAX_NEW) -> list[int]:
    out = model.generate(**prompt.model_inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, prompt.input_ids.shape[0]:].tolist()


@functools.lru_cache(maxsize=None)
def static_adapter():
    loaded, _ = tiny_by_name(MODEL)
    return make_adapter(loaded.model, loaded.processor, "static")


def test_gemma3_ar_matches_hf_generate_past_the_sliding_window_and_eagle2_is_lossless():
    loaded, adapter = tiny_by_name(MODEL)
    assert isinstance(adapter, Gemma3Adapter) and adapter.sliding_window == SLIDING_WINDOW
    samples = easyvqa_samples(limit=2)
    ar = decode_all(adapter, None, samples, MAX_NEW)
    for sample, result in zip(samples, ar):
        prompt = adapter.build_prompt(sample.messages, sample.images)
        assert len(prompt.input_ids) > 2 * SLIDING_WINDOW  # the sliding layers drop most of the prompt
        assert result.stop_reason == "max_new_tokens" and len(set(result.new_ids)) > 5  # not a degenerate loop
        assert result.new_ids == hf_generate(loaded.model, prompt)
    eagle2 = decode_all(adapter, prepared("eagle2", adapter, draft="random"), samples, MAX_NEW)
    assert [r.new_ids for r in eagle2] == [r.new_ids for r in ar]


@pytest.mark.slow
def test_gemma3_static_engine_matches_hf_generate_and_stays_lossless():
    loaded, _ = tiny_by_name(MODEL)
    adapter = static_adapter()
    samples = easyvqa_samples(limit=2)
    ar = decode_all(adapter, None, samples, MAX_NEW)
    for sample, result in zip(samples, ar):
        assert result.new_ids == hf_generate(loaded.model, adapter.build_prompt(sample.messages, sample.images))
    for name in ("ngram", "eagle2"):
        method = prepared(name, adapter, **({} if name == "ngram" else {"draft": "random"}))
        assert [r.new_ids for r in decode_all(adapter, method, samples, MAX_NEW)] == [r.new_ids for r in ar], name


@pytest.mark.slow
def test_gemma3_compiled_engine_equals_eager_for_ar_and_eagle2():
    """The compiled engine (aot_eager: dynamo's tracing without codegen) traces the per-layer-type
    masks and the full-layer static cache as the static engine runs them."""
    loaded, eager = tiny_by_name(MODEL)
    adapter = make_adapter(loaded.model, loaded.processor, Engine("compiled", "cpu", "aot_eager"))
    samples = easyvqa_samples(limit=1)
    reference = [r.new_ids for r in decode_all(eager, None, samples, 16)]
    assert [r.new_ids for r in decode_all(adapter, None, samples, 16)] == reference
    eagle2 = prepared("eagle2", adapter, draft="random")
    assert [r.new_ids for r in decode_all(adapter, eagle2, samples, 16)] == reference


@pytest.mark.slow
def test_gemma3_prefill_gives_image_tokens_bidirectional_attention_and_scaled_embeddings():
    loaded, adapter = tiny_by_name(MODEL)
    sample = easyvqa_samples()[0]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    prefill = adapter.prefill(prompt)
    # HF's reference: the processor's own output, token_type_ids (1 at image soft tokens) included.
    text = loaded.processor.apply_chat_template(sample.messages, add_generation_prompt=True, tokenize=False)
    inputs = dict(loaded.processor(images=sample.images, text=text, return_tensors="pt"))
    assert torch.equal(inputs["token_type_ids"][0].bool(), prompt.input_ids == adapter.image_token_id)
    with torch.no_grad():
        hf = loaded.model(**inputs).logits[0, -1]
        hf_causal = loaded.model(**{k: v for k, v in inputs.items() if k != "token_type_ids"}).logits[0, -1]
    torch.testing.assert_close(prefill.logits, hf.float())
    assert (hf - hf_causal).abs().max() > 1e-3  # the bidirectional image block changes the prediction
    # Text positions enter the decoder as embed * sqrt(hidden); adapter.embed_tokens (what drafts read) scales too.
    is_text = prompt.input_ids != adapter.image_token_id
    torch.testing.assert_close(prefill.input_embeds[is_text], adapter.embed_tokens(prompt.input_ids[is_text]))
    unscaled = nn.functional.embedding(prompt.input_ids[is_text], adapter.embed_tokens.weight)
    torch.testing.assert_close(prefill.input_embeds[is_text], unscaled * adapter.hidden_size ** 0.5)


def _tree_with_the_true_path_last(true_ids: list[int], vocab_size: int) -> DraftTree:
    """A two-branch tree under the root: a wrong two-token branch first, then the true
    continuation, so the accepted path is not a prefix of the block (commit must move it)."""
    wrong = [(true_ids[0] + 1) % vocab_size, (true_ids[1] + 1) % vocab_size]
    tokens = torch.tensor(wrong + true_ids)
    parents = [0, 1, 0] + list(range(3, 2 + len(true_ids)))
    return DraftTree(tokens, parents)


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["sdpa", "eager", "static"])
def test_gemma3_tree_verify_and_commit_past_the_window_equal_a_causal_chain(attention):
    """Tree logits at the true path's nodes equal a causal forward of that path, and after
    committing the (non-prefix) path the next step equals the chain's: the tree mask, the
    sliding window over it, and the cache move are all right, with either attention kernel."""
    if attention == "static":
        adapter = static_adapter()
    else:
        model, processor = build_tiny_gemma3()
        model.set_attn_implementation(attention)
        adapter = make_adapter(model, processor)
    sample = easyvqa_samples()[0]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    adapter.reserve(len(prompt.input_ids) + 64)
    ar = decode(adapter, prompt, None, 6, GREEDY).new_ids
    first, true_ids, after = ar[0], ar[1:5], ar[5]

    adapter.prefill(prompt)
    chain_logits, _ = adapter.forward(torch.tensor([first] + true_ids))  # causal, HF's own masks
    next_chain, _ = adapter.forward(torch.tensor([after]))

    adapter.prefill(prompt)
    tree = _tree_with_the_true_path_last(true_ids, adapter.vocab_size)
    verify_ids = torch.cat([torch.tensor([first]), tree.tokens])
    logits, _ = adapter.forward(verify_ids, tree.depth_tensor, tree.ancestor_mask())
    path = [0, 3, 4, 5, 6]
    torch.testing.assert_close(logits[path], chain_logits, rtol=1e-4, atol=1e-4)
    adapter.commit(path)
    assert adapter.cache_length == len(prompt.input_ids) + 5
    next_tree, _ = adapter.forward(torch.tensor([after]))
    torch.testing.assert_close(next_tree, next_chain, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_gemma3_image_soft_token_mismatch_between_processor_and_model_raises():
    model, processor = build_tiny_gemma3()
    adapter = make_adapter(model, processor)
    # Gemma3Processor's own image_token is the <start_of_image> marker; the check is on the soft token.
    assert processor.image_token == "<start_of_image>" and adapter.image_token_id == processor.tokenizer.image_token_id
    model.config.image_token_id = processor.tokenizer.boi_token_id
    with pytest.raises(ImageTokenError, match="expands images into '<image_soft_token>'"):
        make_adapter(model, processor)
    sample = easyvqa_samples()[0]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    wrong = prompt.input_ids.masked_fill(prompt.input_ids == adapter.image_token_id, 0)
    with pytest.raises(ImageTokenError, match="none of its .* tokens is the image token id"):
        adapter.check_image_tokens(wrong, 1)


@pytest.mark.slow
def test_gemma3_two_image_prompt_matches_generate_and_eagle2_is_lossless():
    loaded, adapter = tiny_by_name(MODEL)
    images = [s.images[0] for s in easyvqa_samples()[:2]]
    prompt = adapter.build_prompt(two_image_messages(), images)
    assert len(prompt.image_spans) == 2
    ar = decode(adapter, prompt, None, 30, GREEDY).new_ids
    assert ar == hf_generate(loaded.model, prompt, 30)
    method = prepared("eagle2", adapter, draft="random")
    assert decode(adapter, prompt, method.make_proposer(adapter, None), 30, GREEDY).new_ids == ar


LOSSLESS = ["oracle", "ngram", "eagle2", "eaglevlm", "vispec", "specvlm", "medusa", "medusa-dynamic", "eagle3"]


@pytest.mark.slow
@pytest.mark.parametrize("name", LOSSLESS)
def test_every_lossless_method_reproduces_ar_on_gemma3_with_one_and_two_images(name):
    _, adapter = tiny_by_name(MODEL)
    samples = easyvqa_samples(limit=2)
    two_images = adapter.build_prompt(two_image_messages(), [s.images[0] for s in samples])
    prompts = [adapter.build_prompt(s.messages, s.images) for s in samples] + [two_images]
    ar = [decode(adapter, p, None, MAX_NEW, GREEDY).new_ids for p in prompts]
    method = prepared(name, adapter, **({} if name in ("oracle", "ngram") else {"draft": "random"}))
    results = [decode(adapter, p, method.make_proposer(adapter, SampleContext(str(i), ar[i])), MAX_NEW, GREEDY)
               for i, p in enumerate(prompts)]
    assert [r.new_ids for r in results] == ar
    if name == "oracle":
        assert mean_tau(results) > 4  # depth-4 chains all accepted: commits of whole blocks past the window


@pytest.mark.slow
def test_gemma3_draft_layer_is_gemma3s_own_full_attention_layer_with_the_global_rope():
    _, adapter = tiny_by_name(MODEL)
    eagle2 = prepared("eagle2", adapter, draft="random", seed=3).draft
    eaglevlm = prepared("eaglevlm", adapter, draft="random", seed=3).draft
    layer = eagle2.layers[0]
    assert type(layer).__name__ == "Gemma3DecoderLayer"
    assert isinstance(layer.input_layernorm, nn.Identity)  # EAGLE: the fc output enters attention un-normed
    assert type(eaglevlm.layers[0].input_layernorm).__name__ == "Gemma3RMSNorm"  # EagleVLM keeps it
    for part in ("pre_feedforward_layernorm", "post_feedforward_layernorm", "self_attn.q_norm", "self_attn.k_norm"):
        assert f"layers.0.{part}.weight" in eagle2.state_dict()
    assert layer.self_attn.sliding_window is None and eagle2.config.layer_types == ["full_attention"]
    assert layer.self_attn.scaling == adapter.text_config.query_pre_attn_scalar ** -0.5
    # The draft's rope is the target's global-layer rope (theta 1e6), not its local one (1e4).
    positions = torch.arange(7)[None]
    x = torch.zeros(1, 7, adapter.hidden_size)
    target_rotary = adapter.decoder.rotary_emb
    for ours, theirs in zip(eagle2.rotary_emb(x, positions), target_rotary(x, positions, "full_attention")):
        torch.testing.assert_close(ours, theirs)
    assert not torch.allclose(eagle2.rotary_emb(x, positions)[0], target_rotary(x, positions, "sliding_attention")[0])


@pytest.mark.slow
def test_a_saved_gemma3_checkpoint_loads_by_path_and_a_missing_processor_is_a_clear_error(tmp_path):
    loaded, adapter = tiny_by_name(MODEL)
    loaded.model.save_pretrained(tmp_path)
    loaded.processor.save_pretrained(tmp_path)
    again = load_model(str(tmp_path), torch.float32, "cpu")
    assert type(again.model).__name__ == "Gemma3ForConditionalGeneration"
    reloaded = make_adapter(again.model, again.processor)
    sample = easyvqa_samples()[0]
    ids = decode(reloaded, reloaded.build_prompt(sample.messages, sample.images), None, 12, GREEDY).new_ids
    assert ids == decode(adapter, adapter.build_prompt(sample.messages, sample.images), None, 12, GREEDY).new_ids
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).unlink()
    with pytest.raises(ModelLoadError, match="its processor did not"):
        load_model(str(tmp_path), torch.float32, "cpu")
