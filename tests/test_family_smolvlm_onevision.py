"""SmolVLM / Idefics3 (image splitting: several runs of image tokens per image) and LLaVA-OneVision
(SigLIP + Qwen2, anyres_max_9): AR equals HF generate, the image-token checks, two-image prompts,
and every lossless method exact against AR, on tiny random-init models of the real HF classes."""

import functools
import json

import pytest
import torch

from conftest import GREEDY, easyvqa_samples, prepared, two_image_messages
from methods.oracle import OracleProposer
from vispec_bench.engine.adapter import ImageTokenError, make_adapter
from vispec_bench.engine.decode import decode
from vispec_bench.engine.split_image_adapter import SplitImageAdapter
from vispec_bench.models.loading import ModelLoadError, load_model

# Builder seeds: at seed 0 the random Qwen2 of tiny-llava-onevision falls into one repeated token
# after two, whatever the prompt; seed 1 gives prompt-dependent outputs, a stronger check.
SEEDS = {"tiny-smolvlm": 0, "tiny-idefics3": 0, "tiny-llava-onevision": 1}
QUICK = ["tiny-smolvlm", "tiny-llava-onevision"]
ALL = [*QUICK, pytest.param("tiny-idefics3", marks=pytest.mark.slow)]
DRAFT_METHODS = ["eagle2", "eaglevlm", "vispec", "vispec-noadaptor", "specvlm", "specvlm-resampler", "medusa",
                 "medusa-dynamic", "eagle3"]


@functools.lru_cache(maxsize=None)
def family(name: str):
    loaded = load_model(name, torch.float32, "cpu", seed=SEEDS[name])
    return loaded, make_adapter(loaded.model, loaded.processor)


def one_and_two_image_prompts(adapter):
    samples = easyvqa_samples(limit=2)
    return [adapter.build_prompt(samples[0].messages, samples[0].images),
            adapter.build_prompt(two_image_messages(), [s.images[0] for s in samples])]


def generate_ids(loaded, prompt, max_new_tokens):
    out = loaded.model.generate(**prompt.model_inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, prompt.input_ids.shape[0]:].tolist()


@pytest.mark.parametrize("name", ALL)
def test_ar_matches_hf_generate_and_eagle2_is_lossless(name):
    loaded, adapter = family(name)
    sample = easyvqa_samples()[0]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    ar = decode(adapter, prompt, None, 24, GREEDY)
    assert ar.new_ids == generate_ids(loaded, prompt, 24)
    assert len(set(ar.new_ids)) > 3  # a prompt-dependent answer, not one token repeated
    eagle2 = decode(adapter, prompt, prepared("eagle2", adapter, draft="random").make_proposer(adapter, None), 24,
                    GREEDY)
    assert eagle2.new_ids == ar.new_ids


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_ar_matches_hf_generate_on_three_samples_and_a_two_image_prompt(name):
    loaded, adapter = family(name)
    prompts = [adapter.build_prompt(s.messages, s.images) for s in easyvqa_samples()]
    prompts.append(one_and_two_image_prompts(adapter)[1])
    for prompt in prompts:
        assert decode(adapter, prompt, None, 32, GREEDY).new_ids == generate_ids(loaded, prompt, 32)


@pytest.mark.slow
def test_split_image_prompts_have_one_span_per_sub_image_grouped_by_global_view():
    _, adapter = family("tiny-smolvlm")
    assert isinstance(adapter, SplitImageAdapter) and adapter.decoder is adapter.model.model.text_model
    one, two = one_and_two_image_prompts(adapter)
    # A 64x64 easy-VQA image: 2x2 tiles of 32 px + the global view, 4 image tokens each (pixel shuffle).
    assert [end - start for start, end in one.image_spans] == [4] * 5
    assert adapter.runs_per_image(two.input_ids, two.image_spans) == [5, 5] and two.num_images == 2
    tokens = adapter.tokenizer.convert_ids_to_tokens(one.input_ids.tolist())
    assert [tokens[start - 1] for start, _ in one.image_spans] == [
        "<row_1_col_1>", "<row_1_col_2>", "<row_2_col_1>", "<row_2_col_2>", "<global-img>"]
    # Every image token is in a span, and nothing else is.
    covered = torch.zeros_like(one.input_ids, dtype=torch.bool)
    for start, end in one.image_spans:
        covered[start:end] = True
    assert torch.equal(covered, one.input_ids == adapter.image_token_id)
    _, onevision = family("tiny-llava-onevision")
    assert [len(p.image_spans) for p in one_and_two_image_prompts(onevision)] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-smolvlm", "tiny-idefics3", "tiny-llava-onevision"])
def test_image_token_id_mismatch_and_missing_images_fail_loudly(name):
    loaded, adapter = family(name)
    one, two = one_and_two_image_prompts(adapter)
    wrong = one.input_ids.masked_fill(one.input_ids == adapter.image_token_id, adapter.image_token_id + 1)
    with pytest.raises(ImageTokenError, match="none of its .* tokens is the image token id"):
        adapter.check_image_tokens(wrong, 1)
    expected = "expected 2 image" if isinstance(adapter, SplitImageAdapter) else "expected 2 runs of image tokens"
    with pytest.raises(ImageTokenError, match=expected):
        adapter.check_image_tokens(one.input_ids, 2)
    with pytest.raises(ImageTokenError, match="expected 1 "):
        adapter.check_image_tokens(two.input_ids, 1)
    attribute = "image_token_id" if hasattr(loaded.model.config, "image_token_id") else "image_token_index"
    original = getattr(loaded.model.config, attribute)
    try:
        setattr(loaded.model.config, attribute, original + 1)  # the processor's id no longer matches the model's
        with pytest.raises(ImageTokenError, match=f"expects image_token_id {original + 1}"):
            make_adapter(loaded.model, loaded.processor)
    finally:
        setattr(loaded.model.config, attribute, original)


@pytest.mark.slow
@pytest.mark.parametrize("name", QUICK)  # Idefics3: SmolVLM's modeling code and adapter, checked above
@pytest.mark.parametrize("method", ["oracle", "ngram", *DRAFT_METHODS])
def test_every_lossless_method_reproduces_ar_with_one_and_two_images(name, method):
    _, adapter = family(name)
    for prompt in one_and_two_image_prompts(adapter):
        ar = decode(adapter, prompt, None, 30, GREEDY)
        if method == "oracle":
            proposer = OracleProposer(ar.new_ids, 3, False, adapter.vocab_size)
        else:
            options = {} if method == "ngram" else {"draft": "random"}
            proposer = prepared(method, adapter, **options).make_proposer(adapter, None)
        result = decode(adapter, prompt, proposer, 30, GREEDY)
        assert result.new_ids == ar.new_ids, (method, prompt.num_images)
        if method == "oracle" and ar.stop_reason == "max_new_tokens":
            assert result.accepted_lengths[:-1] == [4] * (len(result.accepted_lengths) - 1)


@pytest.mark.slow
def test_vispec_and_specvlm_compress_each_sub_image_on_its_own():
    """Each run is a span: ViSpec's draft cache holds num_q - 1 compressed tokens per sub-image,
    SpecVLM names one compression per sub-image, EAGLE-2 carries every image token's pair."""
    _, adapter = family("tiny-smolvlm")
    prompt = one_and_two_image_prompts(adapter)[1]  # two images: 10 runs of 4 tokens
    prefill = adapter.prefill(prompt)
    first = int(prefill.logits.argmax())
    vispec = prepared("vispec", adapter, draft="random", num_q=3).make_proposer(adapter, None)
    vispec.start(adapter, prompt, prefill, first)
    assert vispec.draft_visual_tokens == 10 * 2
    specvlm = prepared("specvlm-pool", adapter, draft="random", ratio=4).make_proposer(adapter, None)
    specvlm.start(adapter, prompt, prefill, first)
    assert specvlm.draft_compression.split(",") == ["pool/4"] * 10 and specvlm.draft_visual_tokens == 10
    eagle2 = prepared("eagle2", adapter, draft="random").make_proposer(adapter, None)
    eagle2.start(adapter, prompt, prefill, first)
    assert eagle2.draft_visual_tokens == 40


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-idefics3", "tiny-smolvlm", "tiny-llava-onevision"])
def test_saved_checkpoint_loads_or_names_the_missing_package(name, tmp_path):
    """A checkpoint as the hub ships it: Idefics3's HF processor needs nothing more and loads
    (where transformers can import its PIL image processor: 5.17's demands torchvision); SmolVLM's
    and LLaVA-OneVision's carry a video processor that needs torchvision."""
    loaded, adapter = family(name)
    loaded.model.save_pretrained(tmp_path)
    loaded.processor.save_pretrained(tmp_path)
    hf_processor = type(loaded.processor).__name__.removeprefix("ImageOnly")
    for path in tmp_path.glob("*.json"):  # the name HF's own processor saves under
        path.write_text(path.read_text().replace(type(loaded.processor).__name__, hf_processor))
    if hf_processor != "Idefics3Processor":
        video = hf_processor.replace("Processor", "VideoProcessor")
        (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({"video_processor_type": video}))
    if hf_processor == "Idefics3Processor" and _imports("Idefics3ImageProcessorPil"):
        again = load_model(str(tmp_path), torch.float32, "cpu")
        reloaded = make_adapter(again.model, again.processor)
        sample = easyvqa_samples()[0]
        logits = [a.prefill(a.build_prompt(sample.messages, sample.images)).logits for a in (adapter, reloaded)]
        torch.testing.assert_close(logits[0], logits[1])
        return
    if _imports("torchvision"):
        pytest.skip("torchvision is installed: HF's processors load (SmolVLM's may still need num2words)")
    with pytest.raises(ModelLoadError, match="(?i)needs a package this environment lacks .*torchvision"):
        load_model(str(tmp_path), torch.float32, "cpu")


def _imports(name: str) -> bool:
    """Whether `name` (a module, or a top-level transformers class) can be imported and built here."""
    import importlib

    import transformers

    try:
        if name == "torchvision":
            importlib.import_module(name)
        else:
            getattr(transformers, name)()
        return True
    except ImportError:
        return False
