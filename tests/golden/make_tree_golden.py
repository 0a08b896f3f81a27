"""Record the authors' own outputs for EAGLE-2 / Medusa trees and the EAGLE draft forward.

Our generator; it imports the authors' code from the repository checkouts given on the command
line (nothing of theirs is copied into this repository) and writes small fixtures that
tests/test_golden_trees.py must reproduce through this package:

    python tests/golden/make_tree_golden.py --eagle PATH/TO/SafeAILab-EAGLE \\
        --medusa PATH/TO/FasterDecoding-Medusa --vispec PATH/TO/KangJialiang-ViSpec

What is recorded (tests/golden/README.md says more):
- eagle_trees: the reference's `topK_genrate` (SafeAILab EAGLE, eagle/model/cnets1.py) at the
  papers' settings (VLM depth 3 / top_k 8 / total_token 30; LLM 5 / 10 / 60), for fixed draft
  outputs: its draft forward is stubbed, and its `head` returns fixed logits per level (row r of
  a level belongs to the r-th best node of the previous level, as in the reference).
- medusa_dynamic_trees: the ViSpec repo's Medusa baseline's `topK_genrate`
  (vispec/model/cnets_medusa.py) for fixed per-head logits, at the VLM setting.
- medusa_choices: Medusa's tree candidates (medusa/model/utils.py: generate_medusa_buffers +
  generate_candidates, greedy) for fixed per-head logits and two `medusa_choices` lists (ours:
  methods.medusa.default_tree, passed to their code as medusa_choices).
- eagle_forward/*: tiny random weights in the published EAGLE layout (config.json +
  pytorch_model.bin or model.safetensors), with and without fc bias, with and without a copied
  embed_tokens, for the tiny-llava and tiny-qwen25vl targets; the reference's draft forward
  (SafeAILab cnets1 and the ViSpec repo's EAGLE baseline, vispec/model/cnets.py) on fixed
  inputs, and the level-1 top-k of its last position through the target's lm_head.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SETTINGS = {"vlm": (3, 8, 30), "llm": (5, 10, 60)}  # depth, top_k, total_token (the papers')
FIXED_VOCAB = 64  # vocabulary of the fixed logits (token ids < 64 are valid on every tiny target)


def import_reference(package: str, directory: Path, module: str):
    """Import directory/module.py as package.module without running the package's __init__
    (which would pull in the authors' whole inference stack)."""
    if package not in sys.modules:
        stub = types.ModuleType(package)
        stub.__path__ = [str(directory)]
        sys.modules[package] = stub
    return importlib.import_module(f"{package}.{module}")


def tiny_config(**overrides):
    base = dict(vocab_size=FIXED_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, pad_token_id=0)
    return {**base, **overrides}


def reference_config(cnets, config: dict) -> types.SimpleNamespace:
    """What the reference's EConfig gives for this config.json: its __init__ defaults, overridden
    by the file's keys (extra keys become attributes, as PretrainedConfig does). A plain namespace,
    because current transformers rewrites rope_scaling/rope_theta in every PretrainedConfig, which
    the authors' code (written for transformers 4.x) does not expect."""
    import inspect

    defaults = {name: p.default for name, p in inspect.signature(cnets.EConfig.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    merged = {**defaults, **config}
    if merged.get("num_key_value_heads") is None:  # EConfig's own backward-compatibility rule
        merged["num_key_value_heads"] = merged["num_attention_heads"]
    return types.SimpleNamespace(**merged)


def parents_from_mask(tree_mask: torch.Tensor) -> list[int]:
    """The reference's [T, T] ancestor mask (node 0 = root) -> parent node of each draft node."""
    mask = tree_mask.bool()
    return [max(j for j in range(i) if mask[i, j]) for i in range(1, mask.shape[0])]


def eagle_trees(cnets, generator) -> tuple[list[dict], dict]:
    records, tensors = [], {}
    for name, (depth, top_k, total_token) in SETTINGS.items():
        model = cnets.Model(reference_config(cnets, tiny_config()), total_tokens=total_token, depth=depth, top_k=top_k)
        model.init_tree()
        model.reset_kv()
        levels = [torch.randn(1, FIXED_VOCAB, generator=generator) * 3]
        levels += [torch.randn(top_k, FIXED_VOCAB, generator=generator) * 3 for _ in range(depth)]
        calls = iter(levels)
        model.forward = lambda hidden, input_ids=None, **kw: (torch.zeros(1, input_ids.shape[1], 64), None)
        head = lambda hidden: next(calls)  # noqa: E731 - one call per level, in order
        tokens, _, tree_mask, _ = model.topK_genrate(torch.zeros(1, 5, 64), torch.tensor([[1, 2, 3, 4, 5, 7]]), head,
                                                     None)
        for level, logits in enumerate(levels):
            tensors[f"eagle_{name}.level{level}"] = logits
        records.append({"name": name, "depth": depth, "top_k": top_k, "total_token": total_token,
                        "root": 7, "tokens": tokens[0, 1:].tolist(), "parents": parents_from_mask(tree_mask[0, 0])})
    return records, tensors


def medusa_dynamic_trees(cnets_medusa, generator) -> tuple[list[dict], dict]:
    depth, top_k, total_token = SETTINGS["vlm"]
    model = cnets_medusa.Model(reference_config(cnets_medusa, tiny_config()), total_tokens=total_token, depth=depth,
                               top_k=top_k)
    model.init_tree()
    heads = torch.randn(model.medusa, FIXED_VOCAB, generator=generator) * 3
    # Stub the heads' forward: head h's output at the last position carries h; the stub lm_head maps it to
    # the fixed logits of head h.
    marked = torch.arange(model.medusa, dtype=torch.float)[:, None, None].expand(-1, 1, 64)
    model.forward = lambda hidden, **kw: (marked.clone(), None)
    head = lambda hidden: heads[hidden[..., 0].long()]  # noqa: E731
    tokens, _, tree_mask, _ = model.topK_genrate(torch.zeros(1, 1, 64), torch.tensor([[1, 7]]), head, None)
    record = {"name": "vlm", "depth": depth, "top_k": top_k, "total_token": total_token, "root": 7,
              "tokens": tokens[0, 1:].tolist(), "parents": parents_from_mask(tree_mask[0, 0])}
    return [record], {"medusa_dynamic.heads": heads}


def medusa_choice_trees(utils, generator) -> tuple[list[dict], dict]:
    from methods.medusa import default_tree

    records, tensors = [], {}
    for name, (num_heads, nodes, ranks) in {"default63": (5, 63, 10), "narrow20": (4, 20, 4)}.items():
        choices = [list(p) for p in default_tree(num_heads, nodes, ranks)]
        buffers = utils.generate_medusa_buffers(choices, device="cpu")
        medusa_logits = torch.randn(num_heads, 1, 1, FIXED_VOCAB, generator=generator) * 3
        logits = torch.randn(1, 1, FIXED_VOCAB, generator=generator)
        _, tree_candidates = utils.generate_candidates(medusa_logits, logits, buffers["tree_indices"],
                                                       buffers["retrieve_indices"], temperature=0)
        tensors[f"medusa_choices_{name}.heads"] = medusa_logits[:, 0, 0]
        records.append({"name": name, "medusa_choices": choices, "root": int(logits.argmax()),
                        "tree_candidates": tree_candidates[0].tolist()})
    return records, tensors


FORWARD_CASES = {
    # name: (target, reference module, fc bias, copied embed_tokens, weights file, config.json overrides)
    "llava_bias_bin": ("tiny-llava", "eagle", True, False, "pytorch_model.bin", {}),
    "llava_nobias_embed": ("tiny-llava", "eagle", False, True, "model.safetensors",
                           {"intermediate_size": 96, "rope_theta": 50000.0}),
    "qwen_qkvbias_vispec_repo": ("tiny-qwen25vl", "vispec", True, False, "pytorch_model.bin",
                                 {"qkv_bias": True, "num_key_value_heads": 4, "rope_theta": 1000000.0}),
}


def eagle_forward(modules, generator):
    from safetensors.torch import save_file

    from vispec_bench.engine.adapter import make_adapter
    from vispec_bench.models.loading import load_model

    for name, (target, which, bias, with_embed, weights, overrides) in FORWARD_CASES.items():
        loaded = load_model(target, torch.float32, "cpu")
        adapter = make_adapter(loaded.model, loaded.processor)
        config_dict = tiny_config(vocab_size=adapter.vocab_size, **overrides)
        if not bias:
            config_dict["bias"] = False
        cnets = modules[which]
        torch.manual_seed(0)
        model = cnets.Model(reference_config(cnets, config_dict), bias=bias).eval()
        rotary = model.layers[0].self_attn.rotary_emb
        expected_theta = config_dict.get("rope_theta", 10000.0)
        assert torch.allclose(rotary.inv_freq[1], torch.tensor(expected_theta ** (-2 / 16))), \
            "the reference's rope base differs from config.json's rope_theta under this transformers version"
        with torch.no_grad():  # random weights everywhere (norms and biases too), then the target's embeddings
            for parameter in model.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
            for module in model.modules():
                if "Norm" in type(module).__name__:
                    module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=generator))
            model.embed_tokens.weight.copy_(adapter.embed_tokens.weight)  # what the reference's load_emb does
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if not with_embed:
            del state["embed_tokens.weight"]
        directory = FIXTURES / "eagle_forward" / name
        directory.mkdir(parents=True, exist_ok=True)
        if weights.endswith(".safetensors"):
            save_file(state, str(directory / weights))
        else:
            torch.save(state, directory / weights)
        (directory / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
        hidden = torch.randn(1, 7, 64, generator=generator)
        input_ids = torch.randint(0, adapter.vocab_size, (1, 7), generator=generator)
        with torch.no_grad():
            out = model(hidden, input_ids=input_ids)
            log_probs = torch.log_softmax(adapter.lm_head(out[0, -1]), dim=-1)
        top = log_probs.topk(8)
        save_file({"hidden": hidden, "input_ids": input_ids, "out": out.contiguous(), "top_values": top.values,
                   "top_indices": top.indices}, str(directory / "reference_io.safetensors"))
        (directory / "case.json").write_text(json.dumps({"target": target, "reference": which, "fc_bias": bias,
                                                         "embed_tokens_copied": with_embed}, indent=2) + "\n")


def main(argv=None):
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eagle", type=Path, required=True, help="a checkout of SafeAILab/EAGLE")
    parser.add_argument("--medusa", type=Path, required=True, help="a checkout of FasterDecoding/Medusa")
    parser.add_argument("--vispec", type=Path, required=True, help="a checkout of KangJialiang/ViSpec")
    args = parser.parse_args(argv)
    cnets1 = import_reference("ref_eagle", args.eagle / "eagle" / "model", "cnets1")
    cnets_vispec = import_reference("ref_vispec", args.vispec / "vispec" / "model", "cnets")
    cnets_medusa = import_reference("ref_vispec", args.vispec / "vispec" / "model", "cnets_medusa")
    medusa_utils = import_reference("ref_medusa", args.medusa / "medusa" / "model", "utils")
    generator = torch.Generator().manual_seed(2025)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    trees, tensors = {}, {}
    for key, make, module in (("eagle_trees", eagle_trees, cnets1), ("medusa_dynamic_trees", medusa_dynamic_trees,
                                                                      cnets_medusa),
                              ("medusa_choices", medusa_choice_trees, medusa_utils)):
        trees[key], more = make(module, generator)
        tensors.update(more)
    (FIXTURES / "trees.json").write_text(json.dumps(trees) + "\n")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(FIXTURES / "tree_logits.safetensors"))
    eagle_forward({"eagle": cnets1, "vispec": cnets_vispec}, generator)
    print(f"wrote {FIXTURES}")


if __name__ == "__main__":
    main()
