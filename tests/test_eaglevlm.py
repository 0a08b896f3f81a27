"""EagleVLM: EAGLE-2's draft with the decoder layer's input norm kept; lossless; its own checkpoint kind."""

import pytest
import torch
from torch import nn

from conftest import GREEDY, tiny_models_fast_on, decode_all, easyvqa_samples, prepared, tiny_by_name, trained_draft, \
    two_image_messages
from vispec_bench.drafts.checkpoints import DraftCheckpointError
from vispec_bench.engine.decode import decode


@pytest.mark.parametrize("model", tiny_models_fast_on("tiny-llava"))
def test_eaglevlm_reproduces_ar_with_one_and_two_images(model):
    _, adapter = tiny_by_name(model)
    samples = easyvqa_samples(limit=2)
    method = prepared("eaglevlm", adapter, draft="random")
    assert [r.new_ids for r in decode_all(adapter, method, samples)] == [r.new_ids for r in
                                                                         decode_all(adapter, None, samples)]
    prompt = adapter.build_prompt(two_image_messages(), [s.images[0] for s in samples])
    result = decode(adapter, prompt, method.make_proposer(adapter, None), 30, GREEDY)
    assert result.new_ids == decode(adapter, prompt, None, 30, GREEDY).new_ids


def test_the_only_difference_from_eagle2_is_the_input_norm():
    _, adapter = tiny_by_name("tiny-llava")
    eagle2 = prepared("eagle2", adapter, draft="random", seed=3).draft
    eaglevlm = prepared("eaglevlm", adapter, draft="random", seed=3).draft
    assert isinstance(eagle2.layers[0].input_layernorm, nn.Identity)
    norm = eaglevlm.layers[0].input_layernorm
    assert not isinstance(norm, nn.Identity) and "layers.0.input_layernorm.weight" in eaglevlm.state_dict()
    # Same seed, same parameters otherwise; with the norm removed the two compute the same function.
    assert set(eaglevlm.state_dict()) - set(eagle2.state_dict()) == {"layers.0.input_layernorm.weight"}
    x = torch.randn(1, 5, adapter.hidden_size)
    positions = torch.arange(5)[None]
    mask = torch.zeros(1, 1, 5, 5).masked_fill_(~torch.ones(5, 5, dtype=torch.bool).tril(), torch.finfo(x.dtype).min)
    with torch.no_grad():
        assert not torch.allclose(eaglevlm(x, x, positions, mask), eagle2(x, x, positions, mask))
        eaglevlm.layers[0].input_layernorm = nn.Identity()
        torch.testing.assert_close(eaglevlm(x, x, positions, mask), eagle2(x, x, positions, mask))


def test_an_eagle2_checkpoint_is_refused_by_eaglevlm():
    _, adapter = tiny_by_name("tiny-llava")
    method = prepared("eaglevlm", adapter, draft="random")  # builds fine
    with pytest.raises(DraftCheckpointError, match="eagle2"):
        method.options.draft = str(trained_draft("tiny-llava", "eagle2"))
        method.resolved_draft = None
        method.load_draft_network(adapter)
