"""Engines (issue 15): static and compiled forwards give eager's ids, for AR and every lossless method.

The fast tests compile with the "aot_eager" backend (dynamo's tracing, the padding to buckets,
the static cache: everything but inductor's code generation); the `slow` tests compile with
inductor, as `--engines compiled` does.
"""

import functools

import pytest
import torch

from conftest import TINY_MODELS, easyvqa_samples, tiny_by_name, two_image_messages
from methods.oracle import OracleProposer
from test_engine import BranchingOracle
from vispec_bench.engine.acceptance import SamplingConfig
from vispec_bench.engine.adapter import make_adapter
from vispec_bench.engine.decode import decode
from vispec_bench.engine.engines import Engine, check_engine
from vispec_bench.errors import InputError
from vispec_bench.plugins.method import SampleContext, make_method

GREEDY = SamplingConfig()
LOSSLESS_WITH_DRAFTS = ("eagle2", "vispec", "medusa-dynamic")  # random drafts: they propose, the target decides


@functools.lru_cache(maxsize=None)
def _engine_adapter(name: str, engine: str, backend: str):
    loaded, _ = tiny_by_name(name)
    return make_adapter(loaded.model, loaded.processor, Engine(engine, "cpu", backend))


@functools.lru_cache(maxsize=None)
def _methods(name: str, engine: str, backend: str):
    adapter = _engine_adapter(name, engine, backend)
    methods = [make_method(m, {"draft": "random"}) for m in LOSSLESS_WITH_DRAFTS]
    for method in methods:
        method.resolve({})
        method.prepare(adapter)
    return methods


def _check_engine_equals_eager(name, engine, backend, max_new_tokens=24):
    loaded, eager = tiny_by_name(name)
    adapter = _engine_adapter(name, engine, backend)
    samples = easyvqa_samples()
    prompts = [eager.build_prompt(s.messages, s.images) for s in samples[:2]]
    image = samples[0].images[0]
    prompts.append(eager.build_prompt(two_image_messages(), [image, image]))
    for index, prompt in enumerate(prompts):
        reference = decode(eager, prompt, None, max_new_tokens, GREEDY)
        ar = decode(adapter, prompt, None, max_new_tokens, GREEDY)
        assert ar.new_ids == reference.new_ids, f"{engine} AR differs from eager AR on prompt {index}"
        if index == 0:
            hf = loaded.model.generate(**prompt.model_inputs, max_new_tokens=max_new_tokens, do_sample=False)
            assert ar.new_ids == hf[0, prompt.input_ids.shape[0]:].tolist()
        proposers = [OracleProposer(reference.new_ids, 4, False, adapter.vocab_size),
                     BranchingOracle(reference.new_ids, adapter.vocab_size),
                     *[m.make_proposer(adapter, SampleContext("s", reference.new_ids))
                       for m in _methods(name, engine, backend)]]
        costs = []
        for proposer in proposers:
            result = decode(adapter, prompt, proposer, max_new_tokens, GREEDY)
            assert result.new_ids == reference.new_ids, f"{type(proposer).__name__} on {engine}, prompt {index}"
            assert sum(result.accepted_lengths) + 1 == len(result.new_ids)
            costs.append(result.draft_cost)
        if engine == "compiled" and index == 0:  # padded draft blocks: eagle2's draft cost is eager's (no padding)
            on_eager = _engine_adapter(name, "eager", backend)
            eagle2 = _methods(name, "eager", backend)[0].make_proposer(on_eager, None)
            assert costs[2] == decode(on_eager, prompt, eagle2, max_new_tokens, GREEDY).draft_cost
        oracle = decode(adapter, prompt, OracleProposer(reference.new_ids, 4, False, adapter.vocab_size),
                        max_new_tokens, GREEDY)
        if reference.stop_reason == "max_new_tokens":
            assert max(oracle.accepted_lengths) == 5  # the padded blocks did not cost acceptance


@pytest.mark.parametrize("name, engine", [*[(name, "static") for name in TINY_MODELS], ("tiny-llava", "compiled")])
def test_engine_ids_equal_eager_and_hf_generate_for_ar_and_lossless_methods(name, engine):
    """Static on every tiny VLM class; compiled (aot_eager) on one here, all three with inductor below."""
    _check_engine_equals_eager(name, engine, "aot_eager")


def test_static_cache_is_allocated_once_and_reused_across_samples():
    adapter = _engine_adapter("tiny-llava", "static", "aot_eager")
    samples = easyvqa_samples()
    decode(adapter, adapter.build_prompt(samples[0].messages, samples[0].images), None, 8, GREEDY)
    cache, keys = adapter.cache, adapter.cache.layers[0].keys
    decode(adapter, adapter.build_prompt(samples[1].messages, samples[1].images), None, 8, GREEDY)
    assert adapter.cache is cache and adapter.cache.layers[0].keys is keys
    assert keys.shape[2] == adapter.engine.capacity


def test_a_block_size_not_compiled_in_warm_up_is_counted_as_a_compile_in_the_timed_decode():
    adapter = make_adapter(*[getattr(tiny_by_name("tiny-llava")[0], a) for a in ("model", "processor")],
                           Engine("compiled", "cpu", "aot_eager"))
    prompt = adapter.build_prompt(easyvqa_samples()[0].messages, easyvqa_samples()[0].images)
    # Block sizes no other test uses: dynamo shares a graph between adapters of the same shapes.
    reference = decode(adapter, prompt, None, 30, GREEDY)  # compiles the one-token forward
    warm = decode(adapter, prompt, OracleProposer(reference.new_ids, 2, False, adapter.vocab_size), 30, GREEDY)
    again = decode(adapter, prompt, OracleProposer(reference.new_ids, 2, False, adapter.vocab_size), 30, GREEDY)
    assert warm.compiles >= 1 and again.compiles == 0  # a 3-token block: compiled once, then reused
    deeper = decode(adapter, prompt, OracleProposer(reference.new_ids, 9, False, adapter.vocab_size), 30, GREEDY)
    assert deeper.compiles >= 1  # a 10-token block: a new bucket, compiled inside the timed decode
    assert deeper.new_ids == reference.new_ids
    assert adapter.engine.compile_s > 0


def test_unknown_engine_and_an_overfull_static_cache_are_clear_errors():
    with pytest.raises(InputError, match="did you mean 'compiled'"):
        check_engine("compield")
    engine = Engine("static")
    engine.reserve(10)
    assert engine.capacity == 256  # rounded up: prompts of similar length share one cache shape
    with pytest.raises(InputError, match="reserved 256"):
        engine.mask(torch.ones(1, 300, dtype=torch.bool), torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY_MODELS)
def test_inductor_compiled_engine_equals_eager(name):
    _check_engine_equals_eager(name, "compiled", "inductor")


@pytest.mark.slow
def test_inductor_compiled_testbed_equals_eager_for_ar_eagle2_and_vispec():
    from vispec_bench.models.loading import load_model

    loaded = load_model("testbed", torch.float32, "cpu")
    eager = make_adapter(loaded.model, loaded.processor)
    compiled = make_adapter(loaded.model, loaded.processor, "compiled")
    methods = [make_method(m, {}) for m in ("eagle2", "vispec")]
    for method in methods:
        method.resolve(loaded.default_drafts)
        method.prepare(compiled)
    for sample in easyvqa_samples(limit=2):
        prompt = eager.build_prompt(sample.messages, sample.images)
        reference = decode(eager, prompt, None, 40, GREEDY).new_ids
        assert decode(compiled, prompt, None, 40, GREEDY).new_ids == reference
        for method in methods:
            result = decode(compiled, prompt, method.make_proposer(compiled, SampleContext("s", reference)), 40, GREEDY)
            assert result.new_ids == reference, method.name
            assert sum(result.accepted_lengths) / len(result.accepted_lengths) > 1.5  # trained drafts accept
