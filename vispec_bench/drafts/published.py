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
