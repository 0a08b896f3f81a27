"""Suites (seam 4 of docs/architecture.md): samples with chat messages and images, fixed-seed
selection, scoring. How to add one: docs/extending.md."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Literal

from vispec_bench.errors import InputError

PromptMode = Literal["short", "long"]
# The VLM speculative-decoding papers ask for long answers: drafts are judged on long outputs.
LONG_ANSWER_INSTRUCTION = "Please answer with an explanation."


@dataclass
class Sample:
    sample_id: str
    messages: list[dict]  # chat messages; an image is a content part {"type": "image"}, in order
    images: list = field(default_factory=list)  # PIL images, one per image part
    references: list[str] = field(default_factory=list)  # gold answers for scoring
    meta: dict = field(default_factory=dict)


class Suite:
    name = ""
    # The splits this suite can load, its default first. None: whatever its data source holds
    # (the subclass resolves and checks the split). A split the suite lacks is an error, never
    # silently the default.
    splits: tuple[str, ...] | None = ("test",)

    def __init__(self, prompt_mode: PromptMode = "long", split: str | None = None):
        if prompt_mode not in ("short", "long"):
            raise InputError(f"prompt mode must be 'short' or 'long', got {prompt_mode!r}")
        self.prompt_mode = prompt_mode
        if split is None:
            split = self.splits[0] if self.splits else None
        elif self.splits is not None and split not in self.splits:
            raise InputError(f"suite {self.name!r} has no split {split!r}: it has {', '.join(self.splits)}")
        self.split = split

    def num_candidates(self) -> int:
        raise NotImplementedError

    def sample(self, index: int) -> Sample:
        raise NotImplementedError

    def score(self, sample: Sample, answer_text: str) -> float:
        raise NotImplementedError

    def extra_scores(self, sample: Sample, answer_text: str) -> dict[str, float]:
        """Suite-specific per-sample measures beside `score` (averaged per method in the summary)."""
        return {}

    def select(self, limit: int | None, seed: int) -> list[Sample]:
        """`limit` samples drawn without replacement by a seeded RNG; the same (limit, seed) gives the same ids."""
        total = self.num_candidates()
        if limit is None or limit >= total:
            indices = list(range(total))
        elif limit < 1:
            raise InputError(f"--limit must be >= 1, got {limit}")
        else:
            indices = random.Random(seed).sample(range(total), limit)
        return [self.sample(i) for i in indices]


def sample_ids_hash(sample_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sample_ids).encode()).hexdigest()[:16]


def make_suite(suite_name: str, prompt_mode: str, **source):
    """Instantiate a registered suite; `source` (split, path, name, revision, fixtures) entries
    that are None or False are left to the suite's defaults."""
    from vispec_bench.plugins.registry import SUITES

    options = {key: value for key, value in source.items() if value not in (None, False)}
    suite_class = SUITES.load(suite_name)
    try:
        return suite_class(prompt_mode=prompt_mode, **options)
    except TypeError as err:
        if options and "unexpected keyword" in str(err):
            raise InputError(f"suite {suite_name!r} does not take {', '.join(sorted(options))}: {err}") from None
        raise
