"""Record vllm-project/speculators drafts' outputs on tiny random weights, saved by speculators itself.

Our generator; it runs with the `speculators` package installed in a separate environment
(it pins torch and transformers versions this package does not; nothing of it is copied here)
and records what tests/test_published_speculators.py must reproduce through this package. The
`eagle` variant (EAGLE-1 / HASS) exists in speculators up to 0.4.x, `eagle3` in every release,
so it is run twice (tests/golden/README.md has the commands; the eagle3 cases come from the
current release, the one without `eagle`):

    /work/venv-spec04/bin/python tests/golden/make_speculators_golden.py   # speculators 0.4.0.1: eagle, hass
    /work/venv-spec/bin/python tests/golden/make_speculators_golden.py     # current speculators: eagle3

and writes the cases the installed version has. The target is not run (this package needs a
newer transformers than speculators allows): seeded stand-ins give the verifier's features,
token embeddings and, for `eagle`, lm_head, and the tests feed the same tensors to the loaded
draft. Shapes are the tiny targets' (vispec_bench/models/tiny.py: hidden 64, vocabulary 363).

Recorded per case (fixtures/published_speculators/<case>/: what `save_pretrained` wrote, plus
reference_io.safetensors and case.json):
- eagle / hass: `hidden` [1, n, H], `input_embeds` [1, n, H] -> `out` [1, n, H], the decoder
  layer's output in `EagleSpeculator.forward` (positions 0..n-1, causal), captured by a hook.
- eagle3: `features` [1, n, 3H], `input_embeds` -> `Eagle3DraftModel.forward` with ttt_steps=2
  (eager attention, one document, positions 0..n-1): per step the last layer's output `out_step{s}`
  [1, n, H] and the draft-vocabulary logits `logits_step{s}` (hooks), and the step-2 token
  embeddings `input_embeds_step1` (the inputs shifted left by one, 0 at the end, as its teacher
  forcing feeds them). Step 2 is the draft fed its own outputs: row i sees step-1 rows <= i and
  itself, at position i + 1 — a tree level in the tests' terms. `top_ids_step{s}`: the top-8 draft
  indices of each row mapped to target ids by `idx + d2t[idx]`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "published_speculators"
HIDDEN, VOCAB, NUM_PAIRS, TOP_K = 64, 363, 7, 8
LAYER = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6)
VERIFIERS = {"tiny-llava": ["LlavaForConditionalGeneration"], "tiny-qwen25vl": ["Qwen2_5_VLForConditionalGeneration"]}


def randomize(model: nn.Module, generator) -> None:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.copy_(1 + 0.1 * torch.randn(parameter.shape, generator=generator))
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


def speculators_config(algorithm: str, target: str):
    from speculators.config import SpeculatorsConfig, VerifierConfig
    from speculators.proposals.greedy import GreedyTokenProposalConfig

    return SpeculatorsConfig(algorithm=algorithm, proposal_methods=[GreedyTokenProposalConfig()],
                             default_proposal_method="greedy",
                             verifier=VerifierConfig(name_or_path=f"vispec-bench/{target}",
                                                     architectures=VERIFIERS[target]))


def write_case(name: str, model, tensors: dict, about: dict) -> None:
    from safetensors.torch import save_file

    directory = FIXTURES / name
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    for source in directory.glob("*.py"):  # speculators' own modelling code, for its auto_map: not ours to ship
        source.unlink()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "reference_io.safetensors"))
    (directory / "case.json").write_text(json.dumps(about, indent=2) + "\n")


def eagle_cases(generator) -> None:
    """EAGLE-1 (no fc bias, Llama layer) on tiny-llava and HASS (fc bias, Qwen2 layer) on tiny-qwen25vl."""
    import importlib.metadata
    from speculators.models.eagle import EagleSpeculator, EagleSpeculatorConfig
    from transformers import LlamaConfig, Qwen2Config

    cases = {"speculators_eagle_llava": ("tiny-llava", LlamaConfig(**LAYER), False),
             "speculators_hass_qwen": ("tiny-qwen25vl", Qwen2Config(**{**LAYER, "rope_theta": 1000000.0}), True)}
    for name, (target, layer, fusion_bias) in cases.items():
        torch.manual_seed(0)
        layer._attn_implementation = "eager"  # the 4-D causal mask its forward builds, added to the scores
        config = EagleSpeculatorConfig(transformer_layer_config=layer, layernorms=False, fusion_bias=fusion_bias,
                                       speculators_config=speculators_config("eagle", target))
        model = EagleSpeculator(config, verifier_attachment_mode="detached").eval()
        randomize(model, generator)
        # The verifier's parts EagleSpeculator.attach_verifier would take: embedding, rotary, lm_head.
        model.embed_tokens = nn.Embedding(VOCAB, HIDDEN)
        model.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)
        rotary_class = type(model.transformer).__module__
        model.rotary_emb = getattr(__import__(rotary_class, fromlist=["x"]),
                                   type(layer).__name__.removesuffix("Config") + "RotaryEmbedding")(layer)
        randomize(model.embed_tokens, generator)
        input_ids = torch.randint(0, VOCAB, (1, NUM_PAIRS), generator=generator)
        hidden = torch.randn(1, NUM_PAIRS, HIDDEN, generator=generator)
        captured = []
        hook = model.transformer.register_forward_hook(
            lambda module, args, output: captured.append(output[0] if isinstance(output, tuple) else output))
        with torch.no_grad():
            model(input_ids=input_ids, hidden_states=hidden, attention_mask=torch.ones(1, NUM_PAIRS, dtype=torch.long),
                  position_ids=torch.arange(NUM_PAIRS)[None])
        hook.remove()
        embeds = model.embed_tokens(input_ids).detach()
        del model.embed_tokens, model.lm_head, model.rotary_emb  # the verifier's; not saved by speculators either
        model.embed_tokens = model.lm_head = model.rotary_emb = None
        write_case(name, model, {"hidden": hidden, "input_embeds": embeds, "out": captured[0]},
                   {"target": target, "variant": "eagle", "fusion_bias": fusion_bias,
                    "speculators_version": importlib.metadata.version("speculators")})


def eagle3_cases(generator) -> None:
    """EAGLE-3 with a reduced draft vocabulary on tiny-llava, with the full one on tiny-qwen25vl, and
    with norm_before_residual (speculators' option: the residual after hidden_norm) on tiny-llava."""
    import importlib.metadata
    from speculators.models.eagle3 import Eagle3DraftModel, Eagle3SpeculatorConfig
    from transformers import LlamaConfig

    cases = {"speculators_eagle3_llava_reduced": ("tiny-llava", 96, [0, 1, 1], {}, False),
             "speculators_eagle3_qwen_fullvocab": ("tiny-qwen25vl", VOCAB, [1, 0, 1],
                                                   {"rope_theta": 1000000.0, "intermediate_size": 96}, False),
             "speculators_eagle3_llava_norm_before_residual": ("tiny-llava", 128, [0, 1, 1], {}, True)}
    for name, (target, draft_vocab, aux_ids, overrides, norm_before_residual) in cases.items():
        torch.manual_seed(0)
        layer = LlamaConfig(**{**LAYER, **overrides})
        layer._attn_implementation = "eager"
        config = Eagle3SpeculatorConfig(transformer_layer_config=layer, draft_vocab_size=draft_vocab,
                                        eagle_aux_hidden_state_layer_ids=aux_ids,
                                        norm_before_residual=norm_before_residual,
                                        speculators_config=speculators_config("eagle3", target))
        model = Eagle3DraftModel(config).eval()
        randomize(model, generator)
        if model.d2t is not None:
            kept = torch.randperm(VOCAB, generator=generator)[:draft_vocab].sort().values
            t2d = torch.zeros(VOCAB, dtype=torch.bool)
            t2d[kept] = True
            model.load_vocab_mappings(t2d, kept - torch.arange(draft_vocab))
        input_ids = torch.randint(0, VOCAB, (1, NUM_PAIRS), generator=generator)
        features = torch.randn(1, NUM_PAIRS, 3 * HIDDEN, generator=generator)
        outs, logits = [], []
        hooks = [model.layers[-1].register_forward_hook(lambda m, a, output: outs.append(output)),
                 model.lm_head.register_forward_hook(lambda m, a, output: logits.append(output))]
        with torch.no_grad():
            model(hidden_states=features, input_ids=input_ids, document_ids=torch.zeros(1, NUM_PAIRS, dtype=torch.long),
                  position_ids=torch.arange(NUM_PAIRS)[None], ttt_steps=2)
        for hook in hooks:
            hook.remove()
        shifted = torch.cat([input_ids[:, 1:], input_ids.new_zeros(1, 1)], dim=-1)
        tensors = {"features": features, "input_ids": input_ids, "input_embeds": model.embed_tokens(input_ids),
                   "input_embeds_step1": model.embed_tokens(shifted)}
        for step in range(2):
            top = torch.log_softmax(logits[step][0], dim=-1).topk(TOP_K)
            ids = top.indices if model.d2t is None else top.indices + model.d2t[top.indices]
            tensors.update({f"out_step{step}": outs[step], f"logits_step{step}": logits[step],
                            f"top_values_step{step}": top.values, f"top_ids_step{step}": ids})
        write_case(name, model, {k: v.detach() for k, v in tensors.items()},
                   {"target": target, "variant": "eagle3", "draft_vocab_size": draft_vocab,
                    "eagle_aux_hidden_state_layer_ids": aux_ids, "norm_before_residual": norm_before_residual,
                    "speculators_version": importlib.metadata.version("speculators")})


def main():
    import importlib.util

    generator = torch.Generator().manual_seed(2027)
    if importlib.util.find_spec("speculators.models.eagle"):  # <= 0.4: eagle, and an older eagle3 API
        eagle_cases(generator)
    else:
        eagle3_cases(generator)
    print(f"wrote {FIXTURES}")


if __name__ == "__main__":
    main()
