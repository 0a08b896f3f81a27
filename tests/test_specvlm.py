"""SpecVLM: lossless with every primitive and the gate; the primitives, the gate, the splice's
draft-side cost and a short training run from an EagleVLM draft pinned."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import GREEDY, tiny_models_fast_on, easyvqa_samples, prepared, tiny_by_name, two_image_messages
from methods.specvlm import (ConvCompressor, ElasticCompressor, Gate, Prune, SpecVLM, compress_images, pool,
                             prompt_text_mean)
from vispec_bench.cli import main
from vispec_bench.drafts.checkpoints import DraftCheckpointError
from vispec_bench.drafts.training import frozen_float_lm_head, teacher_features
from vispec_bench.engine.decode import decode
from vispec_bench.errors import InputError
from vispec_bench.plugins.method import make_method
from vispec_bench.plugins.registry import METHODS

SPECVLM_METHODS = ["specvlm", "specvlm-prune", "specvlm-pool", "specvlm-conv", "specvlm-resampler"]
TEXT_ONLY = [{"role": "user", "content": [{"type": "text", "text": "what is red?"}]}]


def _decode(adapter, method, prompt, max_new_tokens=8):
    proposer = method.make_proposer(adapter, None) if method else None
    return decode(adapter, prompt, proposer, max_new_tokens, GREEDY), proposer


@pytest.mark.parametrize("model", tiny_models_fast_on("tiny-qwen25vl"))
def test_specvlm_and_its_ablations_reproduce_ar_with_one_and_two_images(model):
    _, adapter = tiny_by_name(model)
    samples = easyvqa_samples(limit=2)
    prompts = [adapter.build_prompt(samples[0].messages, samples[0].images),
               adapter.build_prompt(two_image_messages(), [s.images[0] for s in samples])]
    ar = [_decode(adapter, None, p)[0].new_ids for p in prompts]
    for name in SPECVLM_METHODS:
        method = prepared(name, adapter, draft="random")
        for prompt, expected in zip(prompts, ar):
            result, proposer = _decode(adapter, method, prompt)
            assert result.new_ids == expected, (name, len(prompt.image_spans))
            assert len(proposer.draft_compression.split(",")) == len(prompt.image_spans)


def test_primitives_output_counts_and_functions():
    torch.manual_seed(0)
    hidden, n = 32, 64
    image = torch.randn(n, hidden)
    prune = Prune(hidden).eval()
    for ratio in (4, 16):
        assert pool(image, ratio).shape == (n // ratio, hidden)
        assert ConvCompressor(hidden, ratio)(image).shape == (n // ratio, hidden)
        kept, bias = prune(image, ratio)
        assert kept.shape == (n // ratio, hidden) and bias is None
        # prune keeps the best-scored tokens, as they are, in their original order
        best = prune.score(image).squeeze(-1).topk(n // ratio).indices.sort().values
        assert torch.equal(kept, image[best])
    compressor = ElasticCompressor(hidden, 4, False, (4, 16), num_q=2, gate_hidden=8).eval()
    assert compressor.labels() == ["prune/4", "prune/16", "pool/4", "pool/16", "conv/4", "conv/16", "resampler/2"]
    counts = [compressor.run_candidate(i, image)[0].shape[0] for i in range(len(compressor.candidates))]
    assert counts == [16, 4, 16, 4, 16, 4, 2]
    # pool: window means, the last window partial; conv starts as pool (when r divides n)
    assert torch.allclose(pool(image, 4)[1], image[4:8].mean(0), atol=1e-6)
    odd = torch.randn(66, hidden)
    assert pool(odd, 4).shape[0] == math.ceil(66 / 4) and torch.allclose(pool(odd, 4)[-1], odd[64:].mean(0), atol=1e-6)
    assert torch.allclose(ConvCompressor(hidden, 4)(image), pool(image, 4), atol=1e-5)


def test_gate_takes_the_argmax_at_inference_and_samples_with_gumbel_in_training():
    torch.manual_seed(0)
    hidden = 32
    compressor = ElasticCompressor(hidden, 4, False, (4, 16), num_q=2, gate_hidden=8)
    image, text = torch.randn(64, hidden), torch.randn(hidden)
    last = compressor.gate.mlp[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.1, 0.0, 0.0, 3.0, 0.2, 0.0]))
    compressor.eval()
    out = compressor(image, text)
    assert out.label == "conv/4" and out.key_bias is None and out.tokens.shape[0] == 16
    compressor.train()
    with torch.no_grad():
        last.bias.zero_()
    labels = {compressor(image, text).label for _ in range(40)}
    assert len(labels) > 3  # Gumbel noise over uniform logits
    # the gate is conditioned on the question: other text, other logits
    with torch.no_grad():
        last.weight.normal_()
    assert not torch.allclose(compressor.gate(image.mean(0), text), compressor.gate(image.mean(0), -text))


def test_each_image_gets_its_own_gate_decision_and_the_question_is_the_prompts_text():
    torch.manual_seed(0)
    hidden = 32
    compressor = ElasticCompressor(hidden, 4, False, (4, 16), num_q=2, gate_hidden=8).eval()
    first, last = compressor.gate.mlp[0], compressor.gate.mlp[-1]
    with torch.no_grad():  # logit of conv/4 = 10 * silu(rms(image mean)[0]), of prune/4 = 1
        for layer in (first, last):
            layer.weight.zero_()
            layer.bias.zero_()
        first.weight[0, 0] = 1.0
        last.weight[4, 0] = 10.0
        last.bias[0] = 1.0
    embeds = torch.randn(40, hidden) * 0.1
    embeds[2:18, 0] += 5.0  # image 1: conv/4
    embeds[20:36, 0] -= 5.0  # image 2: prune/4
    spans = [(2, 18), (20, 36)]
    out = compress_images(SimpleNamespace(compressor=compressor), embeds, 38, spans, None, 1.0)
    assert [c.label for c in out] == ["conv/4", "prune/4"] and [c.tokens.shape[0] for c in out] == [4, 4]
    # the question: the prompt's rows outside the images; rows from prompt_length on (the answer) excluded
    text = torch.cat([embeds[:2], embeds[18:20], embeds[36:38]]).mean(0)
    assert torch.allclose(prompt_text_mean(embeds, 38, spans), text, atol=1e-6)


def _row_features(adapter, answer_tokens=12):
    sample = easyvqa_samples(limit=1)[0]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    answer = decode(adapter, prompt, None, answer_tokens, GREEDY).new_ids
    return teacher_features(adapter, sample.messages, sample.images, answer)


def test_training_gives_the_gate_and_the_prune_score_real_gradients():
    """Through the straight-through attention bias; a token scaling would be undone by the layer's input norm."""
    _, adapter = tiny_by_name("tiny-llava")
    features = _row_features(adapter)
    torch.manual_seed(1)
    for name, parameter in (("specvlm", "gate.mlp.2.weight"), ("specvlm-prune", "prune.score.weight")):
        method = prepared(name, adapter, draft="random")
        draft = method.draft.train()
        trainer = method.make_trainer(draft, frozen_float_lm_head(adapter))
        loss, _ = trainer.loss(features)
        assert torch.isfinite(loss)
        loss.backward()
        grad = dict(draft.compressor.named_parameters())[parameter].grad
        layer_grad = draft.layers[0].self_attn.k_proj.weight.grad.norm()
        assert grad is not None and grad.norm() > 1e-3 * layer_grad, (name, float(grad.norm()), float(layer_grad))


def test_draft_cache_holds_the_compressed_tokens_only_and_the_cost_is_reported():
    _, adapter = tiny_by_name("tiny-llava-next")
    samples = easyvqa_samples(limit=2)
    sample = samples[0]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    prefill = adapter.prefill(prompt)
    first = int(prefill.logits.argmax())

    def cache_length(name, **options):
        proposer = prepared(name, adapter, draft="random", **options).make_proposer(adapter, None)
        proposer.start(adapter, prompt, prefill, first)
        proposer.propose([first], budget=10)
        assert proposer.next_position == prompt.input_ids.shape[0]  # decoding continues at the target's positions
        return proposer, proposer.cache.get_seq_length()

    (start, end), = prompt.image_spans
    _, eaglevlm_length = cache_length("eaglevlm")
    assert eaglevlm_length == prompt.input_ids.shape[0] and end - start == 88
    for name, options, label, count in (("specvlm-pool", {}, "pool/4", 22),
                                        ("specvlm-prune", {"ratio": 16}, "prune/16", 6),  # 88 = 5 * 16 + 8
                                        ("specvlm-resampler", {}, "resampler/2", 2)):
        proposer, length = cache_length(name, **options)
        assert (proposer.draft_compression, proposer.draft_visual_tokens) == (label, count)
        assert length == eaglevlm_length - (end - start) + count
    # the gate's choice per image, joined; the visual tokens summed over the images
    two = adapter.build_prompt(two_image_messages(), [s.images[0] for s in samples])
    _, proposer = _decode(adapter, prepared("specvlm", adapter, draft="random"), two, max_new_tokens=2)
    sizes = {"resampler/2": 2, **{f"{p}/{r}": math.ceil(88 / r) for p in ("prune", "pool", "conv") for r in (4, 16)}}
    assert [e - s for s, e in two.image_spans] == [88, 88]
    labels = proposer.draft_compression.split(",")
    assert len(labels) == 2 and proposer.draft_visual_tokens == sum(sizes[label] for label in labels)


def _trees(adapter, method, prompt, max_new_tokens=12):
    proposer = method.make_proposer(adapter, None)
    trees, propose = [], proposer.propose

    def recording(emitted, budget):
        tree = propose(emitted, budget)
        trees.append(None if tree is None else (tree.tokens.tolist(), list(tree.parents)))
        return tree

    proposer.propose = recording
    result = decode(adapter, prompt, proposer, max_new_tokens, GREEDY)
    return trees, result, proposer


def test_text_only_prompt_runs_no_gate_and_drafts_as_eaglevlm(monkeypatch):
    _, adapter = tiny_by_name("tiny-qwen25vl")
    prompt = adapter.build_prompt(TEXT_ONLY, [])
    specvlm = prepared("specvlm", adapter, draft="random", seed=5)
    with torch.no_grad():  # a draft whose trees are not all alike, so that equal trees say something
        for p in specvlm.draft.parameters():
            p.mul_(3.0)
    eaglevlm = prepared("eaglevlm", adapter, draft="random", seed=5)
    eaglevlm.draft.load_state_dict({k: v for k, v in specvlm.draft.state_dict().items()
                                    if not k.startswith("compressor.")})
    for module in (ElasticCompressor, Gate):
        monkeypatch.setattr(module, "forward", lambda *a, **k: pytest.fail("the compressor or the gate ran"))
    trees, result, proposer = _trees(adapter, specvlm, prompt)
    assert (proposer.draft_visual_tokens, proposer.draft_compression) == (0, "")
    reference, ar_like, _ = _trees(adapter, eaglevlm, prompt)
    assert trees == reference and result.new_ids == ar_like.new_ids
    assert result.new_ids == decode(adapter, prompt, None, 12, GREEDY).new_ids


def test_ablations_are_presets_and_options_are_checked():
    for primitive in ("prune", "pool", "conv", "resampler"):
        entry = METHODS.get(f"specvlm-{primitive}")
        assert entry.load() is SpecVLM and entry.preset == {"primitive": primitive} and entry.ablation_of == "specvlm"
        assert make_method(f"specvlm-{primitive}", {}).draft_kind == "specvlm"
    _, adapter = tiny_by_name("tiny-llava")
    for bad in ({"ratios": "4,1"}, {"ratios": "x"}, {"primitive": "pool", "ratio": "8"}, {"ratio": "4"}):
        with pytest.raises(InputError, match="specvlm"):
            prepared("specvlm", adapter, draft="random", **bad)
    method = prepared("specvlm-pool", adapter, draft="random", ratio=16)
    sample = easyvqa_samples(limit=1)[0]
    _, proposer = _decode(adapter, method, adapter.build_prompt(sample.messages, sample.images), max_new_tokens=2)
    assert proposer.draft_compression == "pool/16"


def test_train_specvlm_from_an_eaglevlm_draft(tmp_path):
    from vispec_bench.drafts.datagen import GenDataConfig, generate_data

    data = tmp_path / "data"
    generate_data(GenDataConfig(model="tiny-llava", limit=4, max_new_tokens=12, dtype="float32", device="cpu"), data,
                  progress=False)
    common = ["--model", "tiny-llava", "--data", str(data), "--steps", "4", "--eval-every", "4", "--save-every", "4",
              "--dtype", "float32", "--device", "cpu", "--eval-fraction", "0.25", "--lr", "3e-3", "--no-progress"]
    assert main(["train", "--method", "eaglevlm", "--out", str(tmp_path / "eaglevlm"), *common]) == 0
    assert main(["train", "--method", "specvlm", "--init", str(tmp_path / "eaglevlm"), "--out", str(tmp_path / "spec"),
                 *common]) == 0
    log = [json.loads(line) for line in (tmp_path / "spec" / "train_log.jsonl").read_text().splitlines()]
    assert math.isfinite(log[-1]["loss"]) and log[-1]["step"] == 4
    config = json.loads((tmp_path / "spec" / "draft_config.json").read_text())
    assert config["method"] == "specvlm" and config["training"]["init"] == str(tmp_path / "eaglevlm")
    _, adapter = tiny_by_name("tiny-llava")
    sample = easyvqa_samples(limit=1)[0]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    expected = decode(adapter, prompt, None, 12, GREEDY).new_ids
    for name in ("specvlm", "specvlm-conv"):  # the ablations load SpecVLM's drafts
        assert _decode(adapter, prepared(name, adapter, draft=tmp_path / "spec"), prompt, 12)[0].new_ids == expected
    with pytest.raises(DraftCheckpointError, match="ratios=4,16"):  # the options that shape the draft must match
        prepared("specvlm", adapter, draft=tmp_path / "spec", ratios="4,8")
