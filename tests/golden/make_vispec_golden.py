"""Regenerate the ViSpec golden fixtures from the authors' own draft code.

    python tests/golden/make_vispec_golden.py --reference /path/to/ViSpec [--out tests/golden/fixtures]

`--reference` is a checkout of github.com/KangJialiang/ViSpec (its `vispec/model/cnets_ours.py`
and `configs.py` are imported from there; nothing of it is copied into this repository). That
code was written for transformers 4.49 (the repo's requirements.txt); run this script in a
separate environment, e.g.

    python -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch 'transformers==4.49.0' safetensors
    /tmp/refvenv/bin/python tests/golden/make_vispec_golden.py --reference /tmp/ViSpec

What it writes, for two draft families at the tiny targets' shapes (hidden 64, vocabulary 363:
vispec_bench/models/tiny.py):

- `vispec-llava/`: config.json in the layout of the authors' LLaVA drafts (no q/k/v biases,
  rms_norm_eps 1e-5) + pytorch_model.bin;
- `vispec-qwen2_5_vl/`: the layout of their Qwen2.5-VL drafts (`qkv_bias: true`, rope_theta 1e6,
  as many key/value heads as query heads) + model.safetensors;
- `<name>/golden.safetensors`: the fixed inputs and the reference's outputs.

The weights are random (seeded), with img_fc moved away from its [I | 0] start and the norms away
from 1, so that every part of the function shows in the outputs. The target is not run: fixed
random tensors stand in for its last hidden states `hidden` [S, H] and its decoder input
embeddings `input_embeds` [S, H] (image embeddings on the image rows), and a random `lm_head`
[V, H] for its head. The reference draft (`cnets_ours.Model`) is driven exactly as its
`topK_genrate` drives it:

1. the prompt: `Model.forward(hidden[None], inputs_embeds=cat(input_embeds[1:], embed_tokens(first)),
   image_mask=mask, use_cache=True)` -> `<case>.prefill_out` [S, H] (zeros at the image rows
   the splice removed) and, from its last row, `<case>.level1_ids` / `<case>.level1_logp`
   (top-k of log_softmax(lm_head));
2. the second tree level: the top-k tokens, each with the root's output as its feature, at
   position S, each node seeing the prompt and itself -> `<case>.level2_out` [k, H].

Cases: `image` (one image at rows [image_start, image_end)) and `text` (no image: the reference
fuses every feature with g = 0). Outputs are float32 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HIDDEN, HEADS, INTERMEDIATE, VOCAB = 64, 4, 128, 363  # the tiny targets' text shapes
PROMPT_LENGTH, IMAGE_SPAN, FIRST_TOKEN, TOP_K = 24, (5, 17), 42, 4

FAMILIES = {
    "vispec-llava": dict(
        config={"architectures": ["LlavaNextForConditionalGeneration"], "model_type": "llava_next",
                "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "hidden_act": "silu",
                "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE, "max_position_embeddings": 4096,
                "num_attention_heads": HEADS, "num_hidden_layers": 1, "num_key_value_heads": HEADS,
                "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "tie_word_embeddings": False,
                "torch_dtype": "float32", "use_cache": True, "vocab_size": VOCAB},
        weights="pytorch_model.bin", seed=1),
    "vispec-qwen2_5_vl": dict(
        config={"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
                "bos_token_id": 0, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": HIDDEN,
                "intermediate_size": INTERMEDIATE, "max_position_embeddings": 8192, "num_attention_heads": HEADS,
                "num_hidden_layers": 1, "num_key_value_heads": HEADS, "rms_norm_eps": 1e-06,
                "rope_theta": 1000000.0, "tie_word_embeddings": False, "torch_dtype": "float32",
                "use_cache": True, "vocab_size": VOCAB, "qkv_bias": True},
        weights="model.safetensors", seed=2),
}


def build_reference_draft(config_path: Path, seed: int):
    from vispec.model.cnets_ours import Model
    from vispec.model.configs import EConfig

    torch.manual_seed(seed)
    model = Model(EConfig.from_pretrained(str(config_path)), bias=True, total_tokens=30, depth=3, top_k=TOP_K,
                  num_q=2)
    with torch.no_grad():
        hidden = HIDDEN
        model.embed_tokens.weight.normal_(0, 1.0)
        model.img_fc.weight[:, :hidden] += torch.randn(hidden, hidden) * 0.05  # [I | 0] + noise: g shows
        model.img_fc.weight[:, hidden:] = torch.randn(hidden, hidden) * hidden ** -0.5
        model.img_fc.bias.normal_(0, 0.1)
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight"):
                param.copy_(1 + 0.1 * torch.randn_like(param))
    model.init_tree()
    return model.float().eval()


def run_case(model, lm_head, hidden, input_embeds, image_mask):
    """The reference's first draft call (the prompt) and its second tree level."""
    model.reset()
    model.last_img_hidden = None
    first = torch.tensor([[FIRST_TOKEN]])
    shifted = torch.cat([input_embeds[None, 1:], model.embed_tokens(first)], dim=1)
    with torch.no_grad():
        out, past = model(hidden[None], inputs_embeds=shifted, use_cache=True,
                          image_mask=None if image_mask is None else image_mask[None])
        root = out[:, -1]
        top = torch.log_softmax(root @ lm_head.T, dim=-1).topk(TOP_K, dim=-1)
        model.tree_mask = model.tree_mask_init
        positions = PROMPT_LENGTH + model.position_ids
        level2, _ = model(root[None].repeat(1, TOP_K, 1), input_ids=top.indices, past_key_values=past,
                          position_ids=positions, use_cache=True,
                          image_mask=None if image_mask is None else image_mask[None])
        model.reset()
    return {"prefill_out": out[0], "level1_ids": top.indices[0], "level1_logp": top.values[0],
            "level2_out": level2[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="checkout of github.com/KangJialiang/ViSpec")
    parser.add_argument("--out", default=str(Path(__file__).parent / "fixtures"))
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.reference).resolve()))
    from safetensors.torch import save_file

    for name, family in FAMILIES.items():
        directory = Path(args.out) / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(family["config"], indent=2) + "\n")
        model = build_reference_draft(directory / "config.json", family["seed"])
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if family["weights"].endswith(".bin"):
            torch.save(state, directory / family["weights"])
        else:
            save_file(state, str(directory / family["weights"]))
        generator = torch.Generator().manual_seed(family["seed"] + 100)
        hidden = torch.randn(PROMPT_LENGTH, HIDDEN, generator=generator)
        input_embeds = torch.randn(PROMPT_LENGTH, HIDDEN, generator=generator)
        lm_head = torch.randn(VOCAB, HIDDEN, generator=generator) * 0.3
        image_mask = torch.zeros(PROMPT_LENGTH, dtype=torch.bool)
        image_mask[IMAGE_SPAN[0]:IMAGE_SPAN[1]] = True
        record = {"hidden": hidden, "input_embeds": input_embeds, "lm_head": lm_head,
                  "image_span": torch.tensor(IMAGE_SPAN), "first_token": torch.tensor(FIRST_TOKEN)}
        for case, mask in (("image", image_mask), ("text", None)):
            for key, value in run_case(model, lm_head, hidden, input_embeds, mask).items():
                record[f"{case}.{key}"] = value.detach().contiguous()
        save_file(record, str(directory / "golden.safetensors"))
        print(f"wrote {directory}")


if __name__ == "__main__":
    main()
