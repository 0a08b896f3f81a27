"""Drafts in the layouts their authors publish: where they are, what their config.json says.

A published draft is a directory with `config.json` and `pytorch_model.bin` or
`model.safetensors` (keys `fc.*`, `layers.0.*`, `embed_tokens.weight`, ...). It is named either
by that directory or by its hub id (`JLKang/ViSpec-Qwen2.5-VL-7B-Instruct`): a hub id is looked
up in the local Hugging Face cache only — nothing is downloaded at run time.

The config.json is the reference code's own (an `EConfig`, a LlamaConfig subset): it gives the
draft layer's shapes, which need not be the target's (the ViSpec Qwen2.5-VL drafts have as many
key/value heads as query heads, while the targets use grouped-query attention), plus
`qkv_bias` (q/k/v biases, Qwen targets) and `bias` (fc bias; absent means true).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Keys that only a full model (target, or target + draft) has: such a checkpoint is no draft.
FULL_MODEL_MARKERS = ("model.layers.", "language_model.", "lm_head.weight", "model.embed_tokens.", "vision_tower.",
                      "visual.", "layers.1.")


def _error(message: str):
    from vispec_bench.drafts.checkpoints import DraftCheckpointError  # imported late: checkpoints may import us

    return DraftCheckpointError(message)


def looks_like_hub_id(source: str) -> bool:
    parts = str(source).split("/")
    return len(parts) == 2 and all(parts) and not str(source).startswith((".", "~")) and "\\" not in str(source)


def resolve_draft_source(source: str | Path) -> Path:
    """A local directory for `source`: the path itself if it exists, else a hub id's local cache snapshot."""
    path = Path(source).expanduser()
    if path.exists() or not looks_like_hub_id(str(source)):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return Path(snapshot_download(str(source), local_files_only=True))
    except Exception as error:  # LocalEntryNotFoundError, or an offline-mode variant of it
        raise _error(
            f"draft {source!r} is not a local directory and is not in the local Hugging Face cache "
            f"({HF_HUB_CACHE}): download it first, e.g. `hf download {source}` (or "
            f"`python -c \"import huggingface_hub; huggingface_hub.snapshot_download('{source}')\"`), "
            f"then pass the same id again, or pass the downloaded directory ({type(error).__name__})") from None


def is_published_layout(directory: Path) -> bool:
    """config.json + authors' weight file, and not this package's own checkpoint layout."""
    from vispec_bench.drafts.checkpoints import CONFIG, WEIGHTS

    directory = Path(directory)
    return (directory.is_dir() and not (directory / WEIGHTS).exists() and not (directory / CONFIG).exists()
            and any((directory / name).exists() for name in WEIGHT_FILES))


def refuse_full_model(state_dict: dict, what: str, expected_keys: str) -> None:
    full = sorted({marker for marker in FULL_MODEL_MARKERS for key in state_dict if key.startswith(marker)})
    if full:
        raise _error(f"this looks like a full model checkpoint, not a {what} (found keys starting with "
                     f"{', '.join(full)}); pass the draft-only checkpoint (keys {expected_keys})")


def read_published_config(directory: Path) -> dict:
    config_path = Path(directory) / "config.json"
    if not config_path.exists():
        raise _error(f"{directory} has draft weights but no config.json: the authors' drafts ship one "
                     "(hidden_size, num_attention_heads, num_key_value_heads, intermediate_size, vocab_size, ...), "
                     "and the draft layer is built from it")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise _error(f"{config_path} is not valid JSON: {error}") from None
    missing = [key for key in ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
               if key not in config]
    if missing:
        raise _error(f"{config_path} lacks {', '.join(missing)}: not a published draft config")
    return config


def check_against_target(config: dict, state_dict: dict, hidden_size: int, vocab_size: int, what: str) -> None:
    """Hidden size and vocabulary of a published draft must be the target's (the vocabulary also by
    the copied embed_tokens' shape, when the checkpoint carries one)."""
    found = {"hidden_size": config.get("hidden_size"), "vocab_size": config.get("vocab_size")}
    embed = state_dict.get("embed_tokens.weight")
    if embed is not None:
        found["vocab_size (embed_tokens rows)"] = int(embed.shape[0])
        found["hidden_size (embed_tokens columns)"] = int(embed.shape[1])
    expected = {"hidden_size": hidden_size, "vocab_size": vocab_size,
                "vocab_size (embed_tokens rows)": vocab_size, "hidden_size (embed_tokens columns)": hidden_size}
    wrong = [f"{key}={value} (target: {expected[key]})" for key, value in found.items() if value != expected[key]]
    if wrong:
        raise _error(f"{what} was made for another target: {', '.join(wrong)}")


def draft_text_config(config: dict) -> SimpleNamespace:
    """The draft layer's text config from a published config.json (the reference's EConfig defaults)."""
    if config.get("rope_scaling"):
        raise _error(f"published draft config has rope_scaling={config['rope_scaling']}: only plain rope "
                     "(rope_theta) is supported for published drafts")
    heads = config["num_attention_heads"]
    qkv_bias = bool(config.get("qkv_bias", False))
    return SimpleNamespace(
        model_type="qwen2" if qkv_bias else "llama",  # Qwen2's layer = Llama's with q/k/v biases
        hidden_size=config["hidden_size"], intermediate_size=config["intermediate_size"],
        num_attention_heads=heads, num_key_value_heads=config.get("num_key_value_heads") or heads,
        head_dim=config["hidden_size"] // heads, rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        hidden_act=config.get("hidden_act", "silu"), max_position_embeddings=config.get("max_position_embeddings", 2048),
        vocab_size=config["vocab_size"], rope_theta=config.get("rope_theta", 10000.0), attention_bias=qkv_bias)
