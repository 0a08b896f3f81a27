"""The run configuration, importable without torch (the CLI reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunConfig:
    model: str = "tiny-llava"
    methods: list[str] = field(default_factory=lambda: ["oracle"])
    suite: str = "easyvqa"
    prompt_mode: str = "long"
    fixtures: bool = False  # the suite's bundled offline rows instead of the real dataset
    dataset_path: str | None = None  # hub id or local directory overriding the suite's default
    dataset_name: str | None = None
    split: str | None = None
    revision: str | None = None
    limit: int | None = 4
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    dtype: str = "auto"
    device: str = "auto"
    method_args: list[str] = field(default_factory=list)
    warmup: bool = True
    repeats: int = 1  # timed passes over all samples, so a speedup comes with its spread
    profile_rounds: bool = True  # an extra untimed pass per sample that splits rounds into phases
