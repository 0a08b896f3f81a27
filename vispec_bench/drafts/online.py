"""`train --online`: online logit distillation (SpecVLM, Huang et al., arXiv 2509.11815).

Offline (`train --data DIR`) trains on a corpus written beforehand by `gen-data`: the target's
greedy answers, stored as ids. Online there is no corpus: the prompts come from a suite (the
same selection `gen-data` makes: `make_suite(...).select(limit, seed)`, `with_suffix`) or from a
gen-data directory's messages and images (its stored answers are not read: only the columns
sample_id, messages and images are selected), and

- the frozen target answers each prompt greedily through the benchmark's engine (`decode` with
  no proposer, the call `gen-data` makes) the first time a training step or an evaluation
  uses it. A greedy answer is the same every epoch, so it is kept in memory for the rest of
  the run and never written to disk; a resumed run (`--resume`) regenerates them as it meets
  them again, and counts them again in `answers_generated`.
- the teacher signals — the target's hidden states over prompt + answer and, through its
  frozen lm_head, its logits — are recomputed at every step (training.OnlineFeatureSource,
  no feature cache), so the draft distils logits computed on the fly, as in SpecVLM.

Cost against offline: generation moves from `gen-data` into the run (one greedy decode per
prompt per run, on each process for its own share), and every step pays a teacher forward
that offline mode may skip once its feature cache holds the row; disk holds nothing but the
checkpoint, the trainer state and the log.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from vispec_bench.errors import InputError
from vispec_bench.engine.acceptance import SamplingConfig
from vispec_bench.engine.decode import decode


@dataclass
class Prompts:
    """The prompts of an online run: sample ids, and each prompt's (messages, images) on demand.

    `rows(index)` returns (messages, RGB images); `source` describes where they came from (it
    is recorded in draft_config.json and train_log.jsonl)."""

    sample_ids: list[str]
    rows: object  # callable index -> (messages, images)
    source: dict

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, index: int) -> tuple[list[dict], list]:
        return self.rows(index)


def suite_prompts(suite: str, prompt_mode: str, split: str | None, fixtures: bool, limit: int | None, seed: int,
                  prompt_suffix: str) -> Prompts:
    """The prompts `gen-data` would answer for the same settings (same selection, same suffix)."""
    from vispec_bench.drafts.datagen import with_suffix
    from vispec_bench.plugins.suite import make_suite

    samples = make_suite(suite, prompt_mode, split=split, fixtures=fixtures).select(limit, seed)
    conversations = [with_suffix(sample.messages, prompt_suffix) for sample in samples]
    return Prompts([s.sample_id for s in samples], lambda i: (conversations[i], list(samples[i].images)),
                   {"suite": suite, "prompt_mode": prompt_mode, "split": split, "fixtures": fixtures, "limit": limit,
                    "seed": seed, "prompt_suffix": prompt_suffix})


def data_prompts(data_dir: str) -> Prompts:
    """A gen-data directory's prompts (messages as stored, suffix included) and images; its
    answer columns are dropped before any row is read."""
    from vispec_bench.drafts.datagen import load_training_rows

    dataset = load_training_rows(data_dir)
    missing = {"sample_id", "messages", "images"} - set(dataset.column_names)
    if missing:
        raise InputError(f"{data_dir} has no column(s) {', '.join(sorted(missing))}: not a gen-data output")
    dataset = dataset.select_columns(["sample_id", "messages", "images"])

    def row(index: int):
        item = dataset[index]
        return json.loads(item["messages"]), [image.convert("RGB") for image in item["images"]]

    return Prompts(list(dataset["sample_id"]), row, {"data": str(data_dir)})


class OnlineAnswers:
    """The target's greedy answer to each prompt, generated on first use and kept in memory."""

    def __init__(self, adapter, prompts: Prompts, max_new_tokens: int):
        self.adapter, self.prompts, self.max_new_tokens = adapter, prompts, max_new_tokens
        self.answers: dict[int, list[int]] = {}
        self.generation_s = 0.0  # wall time spent generating in this process

    @property
    def num_generated(self) -> int:
        return len(self.answers)

    def __getitem__(self, index: int) -> list[int]:
        if index not in self.answers:
            messages, images = self.prompts[index]
            started = time.perf_counter()
            prompt = self.adapter.build_prompt(messages, images)
            self.answers[index] = decode(self.adapter, prompt, None, self.max_new_tokens, SamplingConfig()).new_ids
            self.generation_s += time.perf_counter() - started
        return self.answers[index]


class TrainingAnswers:
    """What `fit_to_data` reads in online mode: the answers to the training prompts, generated
    only if it iterates (a method training on the full vocabulary never does, and nothing is
    generated ahead of the steps). Under several processes each generates its own share and the
    shares are gathered, so every replica fits the same reduced vocabulary. The held-out rows
    are left out (offline mode fits on every row of the corpus)."""

    def __init__(self, answers: OnlineAnswers, my_rows: list[int], world: int):
        self.answers, self.my_rows, self.world = answers, my_rows, world

    def __iter__(self):
        rows = [self.answers[index] for index in self.my_rows]
        if self.world > 1:
            import torch.distributed

            shares = [None] * self.world
            torch.distributed.all_gather_object(shares, rows)
            rows = [answer for share in shares for answer in share]
        return iter(rows)
