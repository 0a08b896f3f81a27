import functools
import tempfile
from pathlib import Path

import pytest
import torch

from vispec_bench.engine.acceptance import SamplingConfig
from vispec_bench.drafts.datagen import GenDataConfig, generate_data
from vispec_bench.engine.decode import decode
from vispec_bench.plugins.method import make_method
from vispec_bench.drafts.training import TrainConfig, train

GREEDY = SamplingConfig()
_WORK = Path(tempfile.mkdtemp(prefix="vispec-drafts-"))

TINY_MODELS = ["tiny-llava", "tiny-llava-next", "tiny-qwen25vl"]


def tiny_models_fast_on(fast: str) -> list:
    """TINY_MODELS as pytest params, all but `fast` behind the `slow` marker (CI runs both sets):
    a method built from tested parts keeps one class in the quick suite."""
    return [pytest.param(name, marks=() if name == fast else pytest.mark.slow) for name in TINY_MODELS]


@functools.lru_cache(maxsize=None)
def _loaded(name: str):
    from vispec_bench.engine.adapter import make_adapter
    from vispec_bench.models.loading import load_model

    loaded = load_model(name, torch.float32, "cpu")
    return loaded, make_adapter(loaded.model, loaded.processor)


@pytest.fixture(params=TINY_MODELS)
def tiny(request):
    """(LoadedModel, adapter) for each tiny VLM class, float32 on the CPU, built once per session."""
    return _loaded(request.param)


def tiny_by_name(name):
    return _loaded(name)


@functools.lru_cache(maxsize=None)
def easyvqa_samples(prompt_mode="long", limit=3, seed=0):
    from suites.easyvqa import EasyVQA

    return EasyVQA(prompt_mode=prompt_mode).select(limit, seed)


def two_image_messages(question="which of the two shapes is red?"):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"},
                                         {"type": "text", "text": question}]}]




@functools.lru_cache(maxsize=None)
def trained_draft(model: str, method: str) -> Path:
    """A draft trained briefly (200 steps) on target-generated easy-VQA answers; ViSpec's
    stage 2 starts from the EAGLE-2 draft (stage 1)."""
    data = _WORK / f"data-{model}"
    if not (data / "dataset").exists():
        generate_data(GenDataConfig(model=model, limit=24, max_new_tokens=40, dtype="float32", device="cpu"), data,
                      progress=False)
    out = _WORK / f"{method}-{model}"
    init = str(trained_draft(model, "eagle2")) if method == "vispec" else None
    train(TrainConfig(method=method, model=model, data=str(data), out=str(out), steps=200, lr=3e-3, eval_every=100,
                      save_every=200, dtype="float32", device="cpu", eval_fraction=0.2, init=init), progress=False,
          log=lambda m: None)
    return out


def edited_draft(tmp_path, source: Path, name: str, edit) -> Path:
    """A copy of the draft directory `source` under tmp_path/name, its config.json changed by `edit(config)`."""
    import json
    import shutil

    directory = tmp_path / name
    shutil.copytree(source, directory)
    config = json.loads((directory / "config.json").read_text())
    edit(config)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def prepared(method: str, adapter, **options):
    built = make_method(method, {k: str(v) for k, v in options.items()})
    built.prepare(adapter)
    return built


def mean_tau(results):
    return sum(sum(r.accepted_lengths) for r in results) / sum(len(r.accepted_lengths) for r in results)


def decode_all(adapter, method, samples, max_new_tokens=40, sampling=GREEDY):
    results = []
    for sample in samples:
        prompt = adapter.build_prompt(sample.messages, sample.images)
        results.append(decode(adapter, prompt, method.make_proposer(adapter, None) if method else None,
                              max_new_tokens, sampling))
    return results
