"""Stage 3 of the testbed build: the trained target writes its drafts' training data (gen-data),
easy-VQA questions in long-answer mode plus text-only instructions."""

from __future__ import annotations

import random
from pathlib import Path

from vispec_bench.models.testbed.build.common import weights_of
from vispec_bench.models.testbed.model import testbed_loader
from vispec_bench.running.config import BuildConfig


TEXT_TEMPLATES = (
    "Describe a {color} {shape} to someone who cannot see it.",
    "Write a short story about a {color} {shape}.",
    "Explain what a {shape} is and where you might see one in everyday life.",
    "What feelings or ideas do people associate with the color {color}? Explain.",
    "Compare a {shape} with a {other_shape}: how are they alike and how do they differ?",
    "Write a few sentences teaching a child to draw a {color} {shape}.",
)


def text_instructions(count: int, seed: int):
    """Text-only instructions (no image) from templates over easy-VQA's shape and colour words: the
    part of the draft data that teaches the draft the target's plain-text style (ViSpec stage 1)."""
    from suites.easyvqa import COLORS, SHAPES

    from vispec_bench.plugins.suite import Sample

    rng = random.Random(seed)
    samples = []
    for index in range(count):
        shape, other = rng.sample(SHAPES, 2)
        text = rng.choice(TEXT_TEMPLATES).format(color=rng.choice(COLORS), shape=shape, other_shape=other)
        samples.append(Sample(f"text-{index}", [{"role": "user", "content": text}], [], []))
    return samples


def generate_draft_data(config: BuildConfig, work: Path, device: str) -> dict:
    """gen-data into WORK/data with the testbed of WORK/weights; returns the data's size."""
    from vispec_bench.drafts.datagen import GenDataConfig, generate_data, load_training_rows

    gen = GenDataConfig(model="testbed", suite="easyvqa", split="train", prompt_mode="long",
                        limit=config.data_samples, seed=config.seed, max_new_tokens=config.data_max_new_tokens,
                        dtype="float32", device=device, batch_size=16)
    path = generate_data(gen, work / "data", extra_samples=text_instructions(config.data_samples // 5, config.seed),
                         model_loader=testbed_loader(weights_of(work)))
    rows = load_training_rows(path)
    lengths = [len(ids) for ids in rows["answer_ids"]]
    return {"rows": len(lengths), "mean_answer_tokens": round(sum(lengths) / len(lengths), 1),
            "text_only_rows": sum(1 for i in rows["sample_id"] if i.startswith("text-"))}
