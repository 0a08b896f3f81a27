"""EAGLE-3: the adapter's captured layer features, the draft's architecture, lossless decoding,
and training-time test."""

import json
import math

import pytest
import torch

from conftest import GREEDY, decode_all, easyvqa_samples, mean_tau, prepared, tiny_by_name, tiny_models_fast_on, \
    trained_draft, two_image_messages
from methods.eagle3 import Eagle3Draft, reference_layer_ids
from transformers import DynamicCache

from methods.eagle2 import additive_mask
from methods.eagle3_training import unroll_mask
from vispec_bench.drafts.training import frozen_float_lm_head, teacher_features
from vispec_bench.engine.adapter import make_adapter
from vispec_bench.engine.decode import decode
from vispec_bench.engine.engines import Engine
from vispec_bench.plugins.method import make_method


@pytest.fixture
def released():
    """Adapters whose capture the test turned on, turned off again (the tiny adapters are shared)."""
    adapters = []
    yield adapters.append
    for adapter in adapters:
        adapter.capture_layers(None)


def test_reference_layer_choice():
    assert reference_layer_ids(32) == (2, 16, 29)  # Llama-3.1-8B: the reference's idx 2, L // 2, L - 3
    assert reference_layer_ids(30) == (2, 15, 27)  # the testbed's SmolLM2-135M
    assert reference_layer_ids(2) == (0, 1, 1)  # too shallow for three distinct layers


@pytest.mark.parametrize("engine", ["eager", "static"])
def test_captured_features_equal_hf_hidden_states_of_one_full_forward(engine):
    """prefill + a forward of 3 tokens on the cache give, at layers (0, 1, 1), the rows of HF's
    output_hidden_states of one forward over the whole sequence (the inputs of those layers)."""
    loaded, _ = tiny_by_name("tiny-llava")
    adapter = make_adapter(loaded.model, loaded.processor, engine)
    adapter.capture_layers([1, 0, 1])
    sample = easyvqa_samples()[0]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    adapter.prefill(prompt)
    prompt_features = adapter.layer_features
    new_ids = torch.tensor([5, 7, 9])
    adapter.forward(new_ids)
    features = torch.cat([prompt_features, adapter.layer_features])  # [S + 3, 3H]
    inputs = dict(prompt.model_inputs)
    inputs["input_ids"] = torch.cat([prompt.input_ids, new_ids])[None]
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    with torch.no_grad():
        hidden_states = loaded.model.model(**inputs, output_hidden_states=True).hidden_states
    expected = torch.cat([hidden_states[i][0] for i in (1, 0, 1)], dim=-1)
    torch.testing.assert_close(features, expected, atol=2e-5, rtol=1e-5)
    adapter.capture_layers(None)
    adapter.forward(torch.tensor([3]))
    assert adapter.layer_features is None  # nothing asked, nothing kept


def _rms(x, weight, eps):
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _rope(x, positions, theta):  # x [heads, n, d]; rotate-half convention (HF / the reference)
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = positions[:, None].float() * inv_freq[None]  # [n, d/2]
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    rotated = torch.cat([-x[..., d // 2:], x[..., :d // 2]], -1)
    return x * cos + rotated * sin


@pytest.mark.parametrize("norm_before_residual", [False, True])
def test_draft_forward_equals_the_architecture_computed_by_hand(norm_before_residual):
    """fc over the features -> residual a (speculators' norm_before_residual: hidden_norm(a));
    attention on cat(input_norm(e), hidden_norm(a)) (2H); MLP with its post-attention norm;
    norm + lm_head; causal, positions 3..7."""
    _, adapter = tiny_by_name("tiny-llava")
    torch.manual_seed(0)
    draft = Eagle3Draft(adapter.text_config, (0, 1, 1), 100, norm_before_residual=norm_before_residual).eval()
    for param in draft.parameters():  # norms away from 1, so a missing or swapped norm shows
        torch.nn.init.normal_(param, mean=1.0 if param.dim() == 1 else 0.0, std=0.3 if param.dim() == 1 else 0.1)
    hidden_size, num = adapter.hidden_size, 5
    features, embeds = torch.randn(num, 3 * hidden_size), torch.randn(num, hidden_size)
    positions = torch.arange(3, 3 + num)
    visible = torch.ones(num, num, dtype=torch.bool).tril()
    mask = torch.zeros(num, num).masked_fill(~visible, torch.finfo(torch.float32).min)[None, None]
    with torch.no_grad():
        out = draft(features[None], embeds[None], positions[None], mask)[0]
        logits = draft.logits(out)
        state = {k: v for k, v in draft.state_dict().items()}
        eps, theta = adapter.text_config.rms_norm_eps, adapter.text_config.rope_parameters["rope_theta"]
        heads, kv_heads = adapter.text_config.num_attention_heads, adapter.text_config.num_key_value_heads
        head_dim = hidden_size // heads
        a = features @ state["fc.weight"].T
        x = torch.cat([_rms(embeds, state["midlayer.input_layernorm.weight"], eps),
                       _rms(a, state["midlayer.hidden_norm.weight"], eps)], -1)
        q = (x @ state["midlayer.self_attn.q_proj.weight"].T).view(num, heads, head_dim).transpose(0, 1)
        k = (x @ state["midlayer.self_attn.k_proj.weight"].T).view(num, kv_heads, head_dim).transpose(0, 1)
        v = (x @ state["midlayer.self_attn.v_proj.weight"].T).view(num, kv_heads, head_dim).transpose(0, 1)
        q, k = _rope(q, positions, theta), _rope(k, positions, theta)
        k, v = k.repeat_interleave(heads // kv_heads, 0), v.repeat_interleave(heads // kv_heads, 0)
        scores = (q @ k.transpose(1, 2) / math.sqrt(head_dim)).masked_fill(~visible, float("-inf"))
        attended = (scores.softmax(-1) @ v).transpose(0, 1).reshape(num, hidden_size)
        residual = _rms(a, state["midlayer.hidden_norm.weight"], eps) if norm_before_residual else a
        y = residual + attended @ state["midlayer.self_attn.o_proj.weight"].T
        z = _rms(y, state["midlayer.post_attention_layernorm.weight"], eps)
        mlp = (torch.nn.functional.silu(z @ state["midlayer.mlp.gate_proj.weight"].T)
               * (z @ state["midlayer.mlp.up_proj.weight"].T)) @ state["midlayer.mlp.down_proj.weight"].T
        expected = y + mlp
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits, _rms(expected, state["norm.weight"], eps) @ state["lm_head.weight"].T,
                                   atol=1e-5, rtol=1e-5)
        # The draft's own output ([n, H]) enters without fc, as the reference feeds it back in the tree.
        again = draft(out[None], embeds[None], positions[None], mask)[0]
        assert not torch.allclose(again, out)


def test_unroll_mask_is_the_references_training_time_test_attention():
    mask = unroll_mask(3, 2, "cpu").int().tolist()
    assert mask == [[1, 0, 0, 1, 0, 0, 1, 0, 0],
                    [1, 1, 0, 0, 1, 0, 0, 1, 0],
                    [1, 1, 1, 0, 0, 1, 0, 0, 1]]


def test_state_dict_names_are_the_reference_checkpoints():
    _, adapter = tiny_by_name("tiny-qwen25vl")
    draft = Eagle3Draft(adapter.text_config, (0, 1, 1), 100)
    hidden = adapter.hidden_size
    shapes = {k: tuple(v.shape) for k, v in draft.state_dict().items()}
    assert shapes["fc.weight"] == (hidden, 3 * hidden)
    assert shapes["midlayer.self_attn.q_proj.weight"][1] == 2 * hidden
    assert shapes["lm_head.weight"] == (100, hidden) and shapes["d2t"] == (100,)
    assert shapes["t2d"] == (adapter.vocab_size,) and draft.t2d.dtype == torch.bool
    assert {"midlayer.hidden_norm.weight", "midlayer.input_layernorm.weight", "norm.weight"} <= set(shapes)
    assert not any(k.endswith("bias") for k in shapes)  # the reference's layer has none, Qwen targets too


@pytest.mark.parametrize("model", tiny_models_fast_on("tiny-llava"))
@pytest.mark.parametrize("engine", ["eager", pytest.param("static", marks=pytest.mark.slow),
                                    pytest.param("compiled", marks=pytest.mark.slow)])
def test_eagle3_reproduces_ar_with_one_and_two_images(model, engine, released):
    """Also on the static and compiled (aot_eager) engines, where the features come out of the
    (compiled) verify forward itself."""
    loaded, _ = tiny_by_name(model)
    adapter = make_adapter(loaded.model, loaded.processor, Engine(engine, "cpu", "aot_eager"))
    samples = easyvqa_samples(limit=2)
    ar = decode_all(adapter, None, samples)
    method = prepared("eagle3", adapter, draft="random", draft_vocab_size=200)
    assert [r.new_ids for r in decode_all(adapter, method, samples)] == [r.new_ids for r in ar]
    prompt = adapter.build_prompt(two_image_messages(), [s.images[0] for s in samples])
    result = decode(adapter, prompt, method.make_proposer(adapter, None), 30, GREEDY)
    assert result.new_ids == decode(adapter, prompt, None, 30, GREEDY).new_ids


def _teacher(adapter, sample, released):
    method = make_method("eagle3", {"ttt_steps": "3"})
    draft = method.build_draft(adapter).float()
    released(adapter)
    method.prepare_teacher(adapter, draft)
    answer = decode(adapter, adapter.build_prompt(sample.messages, sample.images), None, 20, GREEDY).new_ids
    return method, draft, teacher_features(adapter, sample.messages, sample.images, answer)


def test_training_time_test_step_s_is_the_drafts_inference_at_tree_depth_s(released):
    """Row i of unrolled step s equals the proposer's computation: the draft's cache holds pairs
    0..i (target features), then a chain of s nodes each fed its parent's output."""
    _, adapter = tiny_by_name("tiny-llava")
    torch.manual_seed(0)
    method, draft, features = _teacher(adapter, easyvqa_samples()[0], released)
    trainer = method.make_trainer(draft, frozen_float_lm_head(adapter))
    with torch.no_grad():
        unrolled = [out for _, out, _, _ in trainer.unroll(features, 3)]
        for row in (features.prompt_length - 1, features.input_ids.shape[0] - 5):
            cache = DynamicCache()
            num = row + 1
            visible = torch.ones(num, num, dtype=torch.bool).tril()
            out = draft(features.layer_features[None, :num], features.input_embeds[None, 1:num + 1],
                        torch.arange(num)[None], additive_mask(visible, torch.float32), cache)[0, -1]
            torch.testing.assert_close(out, unrolled[0][row], atol=1e-5, rtol=1e-5)
            for step in (1, 2):
                visible = torch.ones(1, num + step, dtype=torch.bool)
                out = draft(out[None, None], features.input_embeds[None, row + 1 + step][None],
                            torch.tensor([[row + step]]), additive_mask(visible, torch.float32), cache)[0, 0]
                torch.testing.assert_close(out, unrolled[step][row], atol=1e-5, rtol=1e-5)


def test_a_few_training_steps_lower_the_loss(released):
    _, adapter = tiny_by_name("tiny-llava")
    torch.manual_seed(0)
    method, draft, features = _teacher(adapter, easyvqa_samples()[1], released)
    method.fit_to_data(draft, [features.input_ids[features.prompt_length:].tolist()], adapter)
    assert set(features.input_ids[features.prompt_length:].tolist()) <= set(draft.target_ids().tolist())
    trainer = method.make_trainer(draft, frozen_float_lm_head(adapter))
    before = trainer.accuracy(features)
    optimizer = torch.optim.AdamW(draft.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss, logs = trainer.loss(features)
        assert set(logs) == {"loss_step0", "loss_step1", "loss_step2"}
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    # The soft cross-entropy's floor is the target's own entropy (the draft matching it exactly):
    # the gap to it, a weighted forward KL, must shrink.
    probs, _, in_vocab = trainer._target(features)
    length, rows, floor = features.input_ids.shape[0], torch.arange(features.input_ids.shape[0] - 1), 0.0
    for step in range(3):
        scored = (rows + 1 + step).clamp(max=length - 1)
        weight = (rows + 1 + step < length) & features.loss_mask[scored] & in_vocab[scored]
        entropy = -(probs[scored] * probs[scored].clamp_min(1e-30).log()).sum(-1)
        floor += 0.8 ** step * float((weight * entropy).sum()) / len(rows)
    assert losses[-1] - floor < 0.3 * (losses[0] - floor)
    after = trainer.accuracy(features)
    assert after["depth1"][0] > before["depth1"][0] and after["depth2"][0] > before["depth2"][0]


@pytest.mark.slow  # trains a draft for 200 steps of 7 unrolled passes (minutes on 2 cores)
@pytest.mark.parametrize("model", ["tiny-llava", "tiny-llava-next", "tiny-qwen25vl"])
def test_eagle3_trained_draft_reproduces_ar_and_beats_the_untrained_one(model, released):
    """Lossless (ids == AR, float32) with a briefly trained draft; training raises acceptance and
    held-out accuracy over the untrained draft."""
    _, adapter = tiny_by_name(model)
    released(adapter)
    samples = easyvqa_samples(limit=3)
    ar = decode_all(adapter, None, samples)
    untrained = decode_all(adapter, prepared("eagle3", adapter, draft="random"), samples)
    method = prepared("eagle3", adapter, draft=trained_draft(model, "eagle3"))
    trained = decode_all(adapter, method, samples)
    assert [r.new_ids for r in untrained] == [r.new_ids for r in ar]
    assert [r.new_ids for r in trained] == [r.new_ids for r in ar]
    assert mean_tau(trained) > mean_tau(untrained) + 0.2
    log = [json.loads(line) for line in (trained_draft(model, "eagle3") / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["acc_depth1"] > log[0]["acc_depth1"] and log[-1]["acc_depth2"] > log[0]["acc_depth2"]
    prompt = adapter.build_prompt(two_image_messages(), [s.images[0] for s in samples[:2]])
    result = decode(adapter, prompt, method.make_proposer(adapter, None), 30, GREEDY)
    assert result.new_ids == decode(adapter, prompt, None, 30, GREEDY).new_ids


def test_only_eagle3_decodes_capture_layer_features():
    """The decode loop asks the adapter for the proposer's layers and for none otherwise: an AR
    decode on an adapter set to capture runs plain target forwards (no capture in the baseline's
    timed region), an EAGLE-3 decode captures on an adapter set to nothing, and the adapter's own
    setting is back afterwards."""
    from vispec_bench.engine import adapter as adapter_module

    _, adapter = tiny_by_name("tiny-llava")
    sample = easyvqa_samples(limit=1)[0]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    eagle3 = prepared("eagle3", adapter, draft="random")
    adapter.capture_layers(eagle3.draft.layer_ids)  # as a trainer's prepare_teacher leaves it
    captured_during = []
    original = adapter_module.TargetAdapter.forward

    def spy(self, *args, **kwargs):
        captured_during.append(self.captured_layer_ids)
        return original(self, *args, **kwargs)

    adapter_module.TargetAdapter.forward = spy
    try:
        ar = decode(adapter, prompt, None, 8, GREEDY)
        assert set(captured_during) == {None}
        assert adapter.captured_layer_ids == eagle3.draft.layer_ids  # restored
        adapter.capture_layers(None)
        captured_during.clear()
        result = decode(adapter, prompt, eagle3.make_proposer(adapter, None), 8, GREEDY)
        assert set(captured_during) == {eagle3.draft.layer_ids} and adapter.captured_layer_ids is None
    finally:
        adapter_module.TargetAdapter.forward = original
    assert result.new_ids == ar.new_ids
