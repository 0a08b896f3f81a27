"""Which draft a run loads: its path and the sha256 of its weights, recorded in the manifest and
every record, and part of the method's config hash (two runs with different drafts are not
comparable, even when both took "the model's default draft")."""

from __future__ import annotations

import hashlib
from pathlib import Path

from vispec_bench.drafts.checkpoints import draft_weights_file
from vispec_bench.drafts.published import resolve_draft_source


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def draft_provenance(path: str | Path, source: str) -> dict:
    """{"path", "sha256", "source"} of a draft checkpoint; `source` says who chose it
    ("option": --method-args; "model default": the draft the model ships). A hub id is recorded
    as its local snapshot directory (vispec_bench.drafts.published)."""
    path = resolve_draft_source(path)
    weights = draft_weights_file(path)  # the file load_draft will read
    return {"path": str(path.resolve()), "weights": weights.name, "sha256": file_sha256(weights), "source": source}
