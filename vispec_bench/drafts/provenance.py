"""Which draft a run loads: its path and the sha256 of its weights, recorded in the manifest and
every record, and part of the method's config hash (two runs with different drafts are not
comparable, even when both took "the model's default draft")."""

from __future__ import annotations

import hashlib
from pathlib import Path

from vispec_bench.drafts.checkpoints import PUBLISHED_FILES, WEIGHTS, DraftCheckpointError
from vispec_bench.drafts.published import resolve_draft_source

# The weights file of each layout load_draft reads, in the order it looks for them.
WEIGHT_FILES = (WEIGHTS, *PUBLISHED_FILES)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_file(path: Path) -> Path:
    """The file holding a draft checkpoint's tensors: the path itself, or the file in the directory
    that load_draft would read (a single weights file for other layouts)."""
    if path.is_file():
        return path
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    candidates = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(p.name for p in candidates) or "no weights file"
    raise DraftCheckpointError(f"draft checkpoint {str(path)!r}: cannot tell which file holds its weights "
                               f"(expected {', '.join(WEIGHT_FILES)} or a single weights file; found {found})")


def draft_provenance(path: str | Path, source: str) -> dict:
    """{"path", "sha256", "source"} of a draft checkpoint; `source` says who chose it
    ("option": --method-args; "model default": the draft the model ships). A hub id is recorded
    as its local snapshot directory (vispec_bench.drafts.published)."""
    path = resolve_draft_source(path)
    if not path.exists():
        raise DraftCheckpointError(f"draft checkpoint {str(path)!r} does not exist (train one with "
                                   "`python -m vispec_bench train`, or pass draft=random for a smoke test)")
    weights = weights_file(path)
    return {"path": str(path.resolve()), "weights": weights.name, "sha256": file_sha256(weights), "source": source}
