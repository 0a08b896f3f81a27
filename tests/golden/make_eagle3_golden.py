"""Record the EAGLE-3 reference draft's outputs on tiny random weights in its published layout.

Our generator; it imports SafeAILab/EAGLE's `eagle/model/cnets.py` (the EAGLE-3 draft, `Model`)
from the checkout given on the command line (nothing of theirs is copied into this repository)
and writes fixtures that tests/test_published_eagle3.py must reproduce through this package:

    python tests/golden/make_eagle3_golden.py --eagle PATH/TO/SafeAILab-EAGLE

It runs in this package's environment (the reference's cnets.py imports nothing newer than
transformers' ACT2FN), as tests/golden/make_tree_golden.py does, and reuses that script's way of
importing the reference without its package `__init__` and of building its config namespace.

Each case (fixtures/published_eagle3/<case>/) holds what the EAGLE-3 authors publish — config.json
(with `draft_vocab_size`) and `pytorch_model.bin` or `model.safetensors` with fc, midlayer.*, norm,
lm_head, d2t, t2d and optionally a copy of embed_tokens — plus `reference_io.safetensors`:
- `features` [1, n, 3H] (seeded stand-ins for the target's low/middle/high-layer features),
  `input_ids` [1, n] and their `input_embeds` (the tiny target's own embedding rows, which is what
  the reference's `load_emb` copies into its embed_tokens);
- `out` [1, n, H]: the reference's `Model.forward` on them (positions 0..n-1, causal);
- `top_values`, `top_ids` [8]: level 1 of its `topK_genrate` — log_softmax(lm_head(norm(out[-1]))),
  top-8, mapped to target ids by `idx + d2t[idx]`;
- `level2_*`: the first tree step of `topK_genrate` — the 8 nodes fed back (input hidden = the
  draft's own last output, H wide, so no fc; tokens = the level-1 target ids; all at position n;
  tree mask = identity over the 8 nodes) with the prompt's KV cache: their outputs [1, 8, H] and each
  node's top-8 (log-probs and target ids).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_tree_golden import import_reference, reference_config  # noqa: E402

FIXTURES = HERE / "fixtures" / "published_eagle3"
TOP_K, NUM_PAIRS = 8, 7

CASES = {
    # name: (target, draft vocabulary (None = the target's), weights file, embed_tokens copied, config.json keys)
    "reference_llava_reduced_bin": ("tiny-llava", 96, "pytorch_model.bin", False,
                                    {"rope_theta": 50000.0, "rms_norm_eps": 1e-5}),
    "reference_qwen_fullvocab_safetensors": ("tiny-qwen25vl", None, "model.safetensors", True,
                                             {"intermediate_size": 96, "rope_theta": 1000000.0}),
}


def published_config(vocab_size: int, draft_vocab_size: int, overrides: dict) -> dict:
    """config.json as the EAGLE-3 authors publish it (e.g. yuhuili/EAGLE3-LLaMA3.1-Instruct-8B's keys)."""
    config = {"architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_act": "silu",
              "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
              "num_hidden_layers": 1, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "pad_token_id": 0,
              "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False, "torch_dtype": "float32",
              "vocab_size": vocab_size, "draft_vocab_size": draft_vocab_size}
    return {**config, **overrides}


def vocabulary_maps(vocab_size: int, draft_vocab_size: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(d2t, t2d) as the reference stores them: d2t[i] = target id of draft index i minus i; t2d a mask."""
    if draft_vocab_size == vocab_size:
        kept = torch.arange(vocab_size)
    else:
        kept = torch.randperm(vocab_size, generator=generator)[:draft_vocab_size].sort().values
    t2d = torch.zeros(vocab_size, dtype=torch.bool)
    t2d[kept] = True
    return kept - torch.arange(draft_vocab_size), t2d


def top_target(model, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's step: log_softmax(lm_head(norm(h))), top-k, draft index -> target id via d2t."""
    top = torch.topk(model.logsoftmax(model.lm_head(model.norm(hidden))), TOP_K, dim=-1)
    return top.values, top.indices + model.d2t[top.indices]


def record_case(cnets, name: str, case: tuple, generator) -> None:
    from safetensors.torch import save_file

    from vispec_bench.engine.adapter import make_adapter
    from vispec_bench.models.loading import load_model

    target, draft_vocab, weights, with_embed, overrides = case
    loaded = load_model(target, torch.float32, "cpu")
    adapter = make_adapter(loaded.model, loaded.processor)
    config = published_config(adapter.vocab_size, draft_vocab or adapter.vocab_size, overrides)
    torch.manual_seed(0)
    model = cnets.Model(reference_config(cnets, config), total_tokens=30, depth=3, top_k=TOP_K).eval()
    rotary = model.midlayer.self_attn.rotary_emb
    assert torch.allclose(rotary.inv_freq[1], torch.tensor(config.get("rope_theta", 10000.0) ** (-2 / 16))), \
        "the reference's rope base differs from config.json's rope_theta"
    d2t, t2d = vocabulary_maps(adapter.vocab_size, config["draft_vocab_size"], generator)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
        for module in model.modules():
            if "Norm" in type(module).__name__:
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=generator))
        model.embed_tokens.weight.copy_(adapter.embed_tokens.weight)  # what the reference's load_emb does
        model.d2t.copy_(d2t)
        model.t2d.copy_(t2d)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if not with_embed:
        del state["embed_tokens.weight"]
    directory = FIXTURES / name
    directory.mkdir(parents=True, exist_ok=True)
    if weights.endswith(".safetensors"):
        save_file(state, str(directory / weights))
    else:
        torch.save(state, directory / weights)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    features = torch.randn(1, NUM_PAIRS, 3 * 64, generator=generator)
    input_ids = torch.randint(0, adapter.vocab_size, (1, NUM_PAIRS), generator=generator)
    model.init_tree()
    model.reset()
    with torch.no_grad():
        out, past = model(features, input_ids=input_ids, use_cache=True)
        top_values, top_ids = top_target(model, out[0, -1])
        # topK_genrate's first tree step: the k nodes see the prompt and themselves, at position n.
        model.tree_mask = model.tree_mask_init
        level2, _ = model(out[:, -1:].repeat(1, TOP_K, 1), input_ids=top_ids[None], past_key_values=past,
                          position_ids=NUM_PAIRS + model.position_ids, use_cache=True)
        level2_values, level2_ids = top_target(model, level2[0])
    save_file({"features": features, "input_ids": input_ids, "input_embeds": adapter.embed_tokens(input_ids).detach(),
               "out": out.contiguous(), "top_values": top_values, "top_ids": top_ids,
               "level2_embeds": adapter.embed_tokens(top_ids[None]).detach(), "level2_out": level2.contiguous(),
               "level2_top_values": level2_values.contiguous(), "level2_top_ids": level2_ids.contiguous()},
              str(directory / "reference_io.safetensors"))
    (directory / "case.json").write_text(json.dumps(
        {"target": target, "layout": "eagle3-reference", "weights": weights, "embed_tokens_copied": with_embed,
         "draft_vocab_size": config["draft_vocab_size"], "top_k": TOP_K}, indent=2) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eagle", type=Path, required=True, help="a checkout of SafeAILab/EAGLE")
    args = parser.parse_args(argv)
    cnets = import_reference("ref_eagle", args.eagle / "eagle" / "model", "cnets")
    generator = torch.Generator().manual_seed(2026)
    for name, case in CASES.items():
        record_case(cnets, name, case, generator)
    print(f"wrote {FIXTURES}")


if __name__ == "__main__":
    main()
