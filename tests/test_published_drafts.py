"""Published draft layouts (EAGLE / EAGLE-2, Medusa's two files, the ViSpec repo's baselines):
each loads through `draft=DIR`, decodes exactly as AR in float32, and a draft for another
target (hidden size, vocabulary) or a full model gives one clear error."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import decode_all, easyvqa_samples, prepared, tiny_by_name
from vispec_bench.cli import main
from vispec_bench.drafts.checkpoints import DraftCheckpointError

EAGLE_FIXTURES = Path(__file__).parent / "golden" / "fixtures" / "eagle_forward"


def write_medusa(directory: Path, layout: str, hidden=64, vocab=None, num_heads=5, layers=1, seed=0) -> Path:
    """Random heads in a published Medusa layout:
    "pt": medusa_lm_head.pt, {i}.0.linear.{weight,bias} + {i}.1.weight (a projection per head);
    "safetensors": medusa_lm_head.safetensors, ResBlocks only (shared lm_head);
    "vispec-repo": the ViSpec repo's Medusa baseline, pytorch_model.bin with medusa_head.{i}.0.linear.*,
    an embed_tokens copy and its EConfig config.json."""
    generator = torch.Generator().manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    state = {}
    for head in range(num_heads):
        for layer in range(layers):
            state[f"{head}.{layer}.linear.weight"] = torch.randn(hidden, hidden, generator=generator) * 0.05
            state[f"{head}.{layer}.linear.bias"] = torch.randn(hidden, generator=generator) * 0.05
        if layout == "pt":
            state[f"{head}.{layers}.weight"] = torch.randn(vocab, hidden, generator=generator) * 0.05
    medusa_config = {"medusa_num_heads": num_heads, "medusa_num_layers": layers, "base_model_name_or_path": "tiny"}
    if layout == "pt":
        torch.save(state, directory / "medusa_lm_head.pt")
    elif layout == "safetensors":
        save_file(state, str(directory / "medusa_lm_head.safetensors"))
    else:
        state = {f"medusa_head.{k}": v for k, v in state.items()}
        state["embed_tokens.weight"] = torch.zeros(vocab, hidden)
        torch.save(state, directory / "pytorch_model.bin")
        medusa_config = {"hidden_size": hidden, "vocab_size": vocab, "num_hidden_layers": 1}
    (directory / "config.json").write_text(json.dumps(medusa_config))
    return directory


def layouts(tmp_path, vocab):
    """(method, target, directory) for every published layout."""
    return [
        ("eagle2", "tiny-llava", EAGLE_FIXTURES / "llava_bias_bin"),  # fc bias, no embed_tokens copy
        ("eagle2", "tiny-llava", EAGLE_FIXTURES / "llava_nobias_embed"),  # "bias": false, embed_tokens copied
        ("eagle2", "tiny-qwen25vl", EAGLE_FIXTURES / "qwen_qkvbias_vispec_repo"),  # the ViSpec repo's EAGLE baseline
        ("medusa", "tiny-llava", write_medusa(tmp_path / "pt", "pt", vocab=vocab)),
        ("medusa", "tiny-llava", write_medusa(tmp_path / "st", "safetensors")),
        ("medusa", "tiny-llava", write_medusa(tmp_path / "vr", "vispec-repo", vocab=vocab)),
        ("medusa-dynamic", "tiny-llava", tmp_path / "vr"),
        ("medusa-dynamic", "tiny-llava", tmp_path / "pt"),
    ]


def test_every_published_layout_decodes_exactly_as_ar(tmp_path):
    vocab = tiny_by_name("tiny-llava")[1].vocab_size
    samples = easyvqa_samples(limit=2)
    ar = {}
    for method, target, directory in layouts(tmp_path, vocab):
        _, adapter = tiny_by_name(target)
        if target not in ar:
            ar[target] = [r.new_ids for r in decode_all(adapter, None, samples, max_new_tokens=24)]
        built = prepared(method, adapter, draft=directory)
        results = decode_all(adapter, built, samples, max_new_tokens=24)
        assert [r.new_ids for r in results] == ar[target], (method, directory.name)
        assert max(max(r.accepted_lengths) for r in results) >= 1


def test_medusa_files_decide_heads_and_projection(tmp_path):
    _, adapter = tiny_by_name("tiny-llava")
    pt = prepared("medusa", adapter, draft=write_medusa(tmp_path / "pt", "pt", vocab=adapter.vocab_size, num_heads=3))
    assert len(pt.heads.blocks) == 3 and pt.heads.projections is not None
    assert max(len(p) for p in pt.paths) <= 3  # the tree uses the file's heads
    shared = prepared("medusa", adapter, draft=write_medusa(tmp_path / "st", "safetensors"))
    assert len(shared.heads.blocks) == 5 and shared.heads.projections is None


def test_published_layouts_load_through_the_cli(tmp_path):
    vocab = tiny_by_name("tiny-llava")[1].vocab_size
    args = ["run", "--model", "tiny-llava", "--methods", "eagle2,medusa,medusa-dynamic", "--method-args",
            f"eagle2.draft={EAGLE_FIXTURES / 'llava_nobias_embed'}",
            f"medusa.draft={write_medusa(tmp_path / 'pt', 'pt', vocab=vocab)}",
            f"medusa-dynamic.draft={write_medusa(tmp_path / 'st', 'safetensors')}", "--limit", "2",
            "--max-new-tokens", "16", "--dtype", "float32", "--device", "cpu", "--out", str(tmp_path / "runs"),
            "--run-id", "pub", "--no-progress"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "runs" / "pub" / "summary.json").read_text())
    for method in ("eagle2", "medusa", "medusa-dynamic"):
        assert summary["methods"][method]["exact_match_rate"] == 1.0, method
    records = [json.loads(line) for line in (tmp_path / "runs" / "pub" / "records.jsonl").read_text().splitlines()]
    assert all(r["tree_settings"]["convention"] == "reference" for r in records if r["method"] != "ar")


def _edited_eagle(tmp_path, name, config_edit=None, state_edit=None) -> Path:
    directory = tmp_path / name
    shutil.copytree(EAGLE_FIXTURES / "llava_bias_bin", directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(config_edit(config) if config_edit else config))
    if state_edit:
        state = torch.load(directory / "pytorch_model.bin", weights_only=True)
        torch.save(state_edit(state), directory / "pytorch_model.bin")
    return directory


def test_published_eagle_for_another_target_or_a_full_model_fails_clearly(tmp_path):
    _, adapter = tiny_by_name("tiny-llava")
    vocab = adapter.vocab_size
    hidden = _edited_eagle(tmp_path, "hidden", lambda c: {**c, "hidden_size": 4096})
    with pytest.raises(DraftCheckpointError, match=r"hidden_size=4096 \(config.json\), but this target has hidden_size=64"):
        prepared("eagle2", adapter, draft=hidden)
    other_vocab = _edited_eagle(tmp_path, "vocab", lambda c: {**c, "vocab_size": 32000})
    with pytest.raises(DraftCheckpointError, match=f"vocab_size=32000 .*this target has vocab_size={vocab}"):
        prepared("eagle2", adapter, draft=other_vocab)
    # No vocab_size in config.json: the embed_tokens copy shows the vocabulary.
    embed = _edited_eagle(tmp_path, "embed", lambda c: {k: v for k, v in c.items() if k != "vocab_size"},
                          lambda s: {**s, "embed_tokens.weight": torch.zeros(vocab + 10, 64)})
    with pytest.raises(DraftCheckpointError, match=rf"vocab_size={vocab + 10} \(embed_tokens\)"):
        prepared("eagle2", adapter, draft=embed)
    unknown = _edited_eagle(tmp_path, "unknown", lambda c: {k: v for k, v in c.items() if k != "vocab_size"})
    with pytest.raises(DraftCheckpointError, match="cannot check its vocab_size"):
        prepared("eagle2", adapter, draft=unknown)
    full = _edited_eagle(tmp_path, "full", None, lambda s: {**s, "model.layers.0.mlp.up_proj.weight": torch.zeros(1),
                                                            "lm_head.weight": torch.zeros(1)})
    with pytest.raises(DraftCheckpointError, match="looks like a full model checkpoint"):
        prepared("eagle2", adapter, draft=full)


def test_published_medusa_for_another_target_or_a_full_model_fails_clearly(tmp_path):
    _, adapter = tiny_by_name("tiny-llava")
    with pytest.raises(DraftCheckpointError, match=r"hidden_size=32 \(its tensors\), but this target has hidden_size=64"):
        prepared("medusa", adapter, draft=write_medusa(tmp_path / "h", "safetensors", hidden=32))
    with pytest.raises(DraftCheckpointError, match=r"vocab_size=100 \(its tensors\)"):
        prepared("medusa", adapter, draft=write_medusa(tmp_path / "v", "pt", vocab=100))
    with pytest.raises(DraftCheckpointError, match=r"vocab_size=100 \(config.json\)"):
        prepared("medusa-dynamic", adapter, draft=write_medusa(tmp_path / "vr", "vispec-repo", vocab=100))
    with pytest.raises(DraftCheckpointError, match="more than one ResBlock per head"):
        prepared("medusa", adapter, draft=write_medusa(tmp_path / "deep", "safetensors", layers=2))
    full = tmp_path / "full"
    full.mkdir()
    save_file({"model.layers.0.mlp.up_proj.weight": torch.zeros(2), "lm_head.weight": torch.zeros(2)},
              str(full / "model.safetensors"))
    with pytest.raises(DraftCheckpointError, match="not a Medusa head file|full model"):
        prepared("medusa", adapter, draft=full)


def test_a_hub_id_loads_from_the_local_cache_and_says_how_to_download_otherwise(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _, adapter = tiny_by_name("tiny-llava")
    with pytest.raises(DraftCheckpointError, match="hf download someone/EAGLE-tiny"):
        prepared("eagle2", adapter, draft="someone/EAGLE-tiny")
    revision = "0" * 40
    repo = tmp_path / "hub" / "models--someone--EAGLE-tiny"
    shutil.copytree(EAGLE_FIXTURES / "llava_bias_bin", repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    built = prepared("eagle2", adapter, draft="someone/EAGLE-tiny")
    assert built.draft.fc.bias is not None
