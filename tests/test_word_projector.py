"""The testbed's `words` projector: image positions as the language model's colour / shape words."""

import pytest
import torch

from vispec_bench.models.testbed import model as testbed_module


def word_row(model, processor, word):
    return model.get_input_embeddings().weight[processor.tokenizer(" " + word, add_special_tokens=False)["input_ids"][0]]


def test_word_projector_puts_colour_words_in_the_first_half_and_shape_words_in_the_second():
    model, processor = testbed_module.build_untrained_testbed(projector="words")
    projector = model.model.multi_modal_projector
    assert isinstance(projector, testbed_module.WordProjector)
    from suites.easyvqa import COLORS, SHAPES

    with torch.no_grad():  # read-outs sure of "red" and "triangle" whatever the patch
        for readout, words, chosen in ((projector.color, COLORS, "red"), (projector.shape, SHAPES, "triangle")):
            readout.weight.zero_()
            readout.bias.fill_(-30.0)
            readout.bias[words.index(chosen)] = 30.0
        out = projector(torch.randn(2, 64, model.config.vision_config.hidden_size))
    assert out.shape == (2, 64, model.config.text_config.hidden_size)
    torch.testing.assert_close(out[:, :32], word_row(model, processor, "red").expand(2, 32, -1))
    torch.testing.assert_close(out[:, 32:], word_row(model, processor, "triangle").expand(2, 32, -1))
    # the words are the model's: not parameters (nothing trains them), not in the shipped weights
    assert {name for name, _ in projector.named_parameters()} == {"color.weight", "color.bias", "shape.weight", "shape.bias"}
    assert testbed_module.projector_of(model.state_dict()) == "words"
    assert testbed_module.projector_of(testbed_module.build_untrained_testbed()[0].state_dict()) == "mlp"


def test_unknown_projector_is_refused():
    with pytest.raises(testbed_module.TestbedError, match="choose one of mlp, words"):
        testbed_module.build_untrained_testbed(projector="linear")


@pytest.mark.slow
def test_words_stage_two_fits_the_readouts_first_and_ships_weights_that_load_as_words(tmp_path):
    from vispec_bench.models.testbed.build.vision import save_vision_weights, train_vision
    from vispec_bench.running.config import BuildConfig

    model, processor = testbed_module.build_untrained_testbed(projector="words")
    logged = []
    config = BuildConfig(projector="words", vision_steps=2, eval_every=2, eval_questions=8, vision_long_examples=0,
                         lora_rank=2, lora_words_steps=3)
    _, factors = train_vision(model, processor, config, tmp_path, "cpu", lambda **entry: logged.append(entry))
    order = [next(i for i, entry in enumerate(logged) if key in entry) for key in ("words_lora_steps", "readout_steps")]
    step0 = next(i for i, entry in enumerate(logged) if entry.get("step") == 0)
    assert order[0] < order[1] < step0  # told in words, then the read-outs, then the image steps
    # an untrained tower still tells colours apart (they are its pixels): far above chance (1/8)
    assert logged[order[1]]["readout_color_accuracy_per_image"] > 0.5
    words_lora = torch.load(tmp_path / "words_lora-3steps.pt", weights_only=True)
    assert any(torch.count_nonzero(b) for k, b in words_lora.items() if k.startswith("B."))  # it trained
    save_vision_weights(model, factors, tmp_path / "weights" / "vision.safetensors")
    loaded, _, _ = testbed_module.build_testbed(weights_dir=tmp_path / "weights")
    assert isinstance(loaded.model.multi_modal_projector, testbed_module.WordProjector)
    pixels = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        features = loaded.model.vision_tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        shipped = loaded.model.multi_modal_projector(features)
        trained = model.model.multi_modal_projector(features)
    torch.testing.assert_close(shipped, trained, rtol=0.05, atol=0.02)  # the read-outs ship in bf16


def test_told_in_words_lora_trains_once_and_an_interrupted_stage_two_loads_it(tmp_path):
    from vispec_bench.models.testbed.build.vision import LanguageLoRA, lora_told_in_words
    from vispec_bench.models.testbed.build.words import told_in_words
    from vispec_bench.running.config import BuildConfig

    assert told_in_words({"color": "red", "shape": "circle"}, "Is there not a circle?").startswith(
        "The image shows a red circle. Is there not a circle?\n")
    model, processor = testbed_module.build_untrained_testbed()
    for param in model.parameters():
        param.requires_grad_(False)
    config = BuildConfig(lora_words_steps=2, vision_batch=2)
    logged = []
    lora = LanguageLoRA(model, rank=2)
    lora_told_in_words(model, lora, processor, config, tmp_path, "cpu", lambda **entry: logged.append(entry))
    trained = {k: v.detach().clone() for k, v in lora.state_dict().items()}
    assert logged[-1]["words_lora_steps"] == 2 and any(torch.count_nonzero(v) for k, v in trained.items() if k.startswith("B."))
    lora.remove()
    again = LanguageLoRA(model, rank=2)  # B = 0 until loaded
    lora_told_in_words(model, again, processor, config, tmp_path, "cpu", lambda **entry: logged.append(entry))
    assert logged[-1]["words_lora"] == "loaded"
    assert all(torch.equal(v, trained[k]) for k, v in again.state_dict().items())
    # another step count is another LoRA: trained, not loaded
    lora_told_in_words(model, again, processor, BuildConfig(lora_words_steps=1, vision_batch=2), tmp_path, "cpu",
                       lambda **entry: logged.append(entry))
    assert logged[-1]["words_lora_steps"] == 1
