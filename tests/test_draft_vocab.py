"""Reduced draft vocabulary (EAGLE-3 token map): fitted from the data, carried by the checkpoint,
proposals stay inside it, and decoding stays lossless because verification is unchanged."""

from collections import Counter

import pytest
import torch

from conftest import _WORK, decode_all, easyvqa_samples, prepared, tiny_by_name, trained_draft
from vispec_bench.drafts.checkpoints import load_draft
from vispec_bench.drafts.datagen import load_training_rows
from vispec_bench.drafts.vocab import frequent_tokens, to_draft, to_vocab, token_map_of
from vispec_bench.drafts.training import TrainConfig, train


def test_frequent_tokens_keeps_the_stop_tokens_and_breaks_ties_by_id():
    rows = [[5, 5, 7, 9], [7, 5, 11], [9]]
    assert frequent_tokens(rows, 3, always=[2]).tolist() == [2, 5, 7]  # 5 (x3), then 7 and 9 (x2) tie -> 7
    assert frequent_tokens(rows, 10, always=[2]).tolist() == [2, 5, 7, 9, 11]
    token_map = torch.tensor([2, 5, 7])
    assert to_draft(torch.tensor([5, 9, 2]), token_map, 12).tolist() == [1, -1, 0]
    assert to_vocab(torch.tensor([2, 0]), token_map).tolist() == [7, 2]


@pytest.mark.parametrize("method", ["eagle2", "medusa"])
def test_reduced_vocabulary_draft_is_lossless_and_proposes_only_mapped_tokens(method, tmp_path):
    model = "tiny-llava"
    trained_draft(model, "eagle2")  # makes sure the generated data exists
    data = _WORK / f"data-{model}"
    out = tmp_path / method
    train(TrainConfig(method=method, model=model, data=str(data), out=str(out), steps=60, lr=3e-3, eval_every=30,
                      save_every=60, dtype="float32", device="cpu", method_args=[f"{method}.vocab=40"]),
          progress=False, log=lambda m: None)
    saved = load_draft(out).state_dict["token_map"]
    answers = load_training_rows(data)["answer_ids"]
    most_common = Counter(t for row in answers for t in row).most_common(1)[0][0]
    assert saved.numel() == 40 and most_common in saved.tolist()

    _, adapter = tiny_by_name(model)
    built = prepared(method, adapter, draft=str(out))  # no vocab option: the checkpoint's map is used
    draft = built.draft if method == "eagle2" else built.heads
    assert torch.equal(token_map_of(draft), saved)
    samples = easyvqa_samples(limit=3)
    ar = decode_all(adapter, None, samples)
    reduced = decode_all(adapter, built, samples)
    assert [r.new_ids for r in reduced] == [r.new_ids for r in ar]

    sample = samples[0]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    prefill = adapter.prefill(prompt)
    proposer = built.make_proposer(adapter, None)
    first = int(prefill.logits.argmax())
    proposer.start(adapter, prompt, prefill, first)
    tree = proposer.propose([first], budget=100)
    assert set(tree.tokens.tolist()) <= set(saved.tolist())
