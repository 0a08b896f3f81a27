import functools

import pytest
import torch

TINY_MODELS = ["tiny-llava", "tiny-llava-next", "tiny-qwen25vl"]


@functools.lru_cache(maxsize=None)
def _loaded(name: str):
    from vispec_bench.adapter import make_adapter
    from vispec_bench.models import load_model

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
