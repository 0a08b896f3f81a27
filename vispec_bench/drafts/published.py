"""Drafts the authors publish: where they are, and what their own config.json says.

A `draft=` option may name a directory or a Hugging Face hub id (e.g.
`JLKang/ViSpec-llava-v1.6-vicuna-7b-hf`). Hub ids are read from the local Hugging Face cache
only: the benchmark never downloads during a run (runs must be reproducible offline), and says
how to download when the draft is not there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from vispec_bench.drafts.checkpoints import DraftCheckpointError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def resolve_draft_source(source: str | Path) -> Path:
    """A draft directory (or file) as given, or a hub id's snapshot in the local HF cache."""
    path = Path(source)
    if path.exists() or not HUB_ID.match(str(source)):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(source), local_files_only=True))
    except LocalEntryNotFoundError:
        raise DraftCheckpointError(
            f"draft {source!r} is neither a directory nor in the local Hugging Face cache; download it first "
            f"(`hf download {source}`, or `huggingface-cli download {source}`) or pass the directory that holds "
            "it") from None


def read_published_config(directory: str | Path) -> dict:
    """The checkpoint's own config.json ({} when it has none)."""
    config_path = Path(directory) / "config.json"
    return json.loads(config_path.read_text()) if config_path.exists() else {}


def is_eagle3_reference(state: dict, config: dict) -> bool:
    """SafeAILab's EAGLE-3 layout: config.json with `draft_vocab_size`, weights under midlayer.*."""
    return "draft_vocab_size" in config or any(key.startswith("midlayer.") for key in state)


def interpret_published(state: dict, config: dict, what: str) -> tuple[dict, dict, str | None]:
    """(state dict, flat config.json keys, the method it is a draft for, if the layout says) of a
    published draft. The speculators layout is translated to the EAGLE authors' names and keys
    (vispec_bench.drafts.speculators_layout); EAGLE-3 reference drafts are marked as eagle3 drafts, so
    another method refuses them by kind; the EAGLE/EAGLE-2, ViSpec and Medusa layouts say nothing."""
    from vispec_bench.drafts.speculators_layout import is_speculators, translate

    if is_speculators(config):
        return translate(state, config, what)
    if is_eagle3_reference(state, config):
        width = config.get("target_hidden_size")
        if width is not None and width != config.get("hidden_size"):
            raise DraftCheckpointError(
                f"{what} is an EAGLE-3 draft {config.get('hidden_size')} wide over a target {width} wide "
                "(target_hidden_size): it embeds tokens with its own embed_tokens, which this package's "
                "EAGLE-3 draft (the target's embedding, the target's width) does not do")
        return state, config, "eagle3"
    return state, config, None
