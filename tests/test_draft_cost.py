"""Draft-side cost (Proposer.draft_cost): the visual tokens the draft's cache holds for the prompt and
its peak size, per record; the summary's means and the report's columns, old records included."""

import gzip
import itertools
import json
import shutil

import torch

from conftest import GREEDY, easyvqa_samples, prepared, tiny_by_name, two_image_messages
from methods.eagle2 import image_pair_count
from vispec_bench.engine.decode import decode
from vispec_bench.results.records import load_records
from vispec_bench.results.report import write_report
from vispec_bench.running.config import RunConfig
from vispec_bench.running.runner import Runner


def _prompts(adapter):
    sample = easyvqa_samples()[0]
    one = adapter.build_prompt(sample.messages, sample.images)
    two = adapter.build_prompt(two_image_messages(), [s.images[0] for s in easyvqa_samples()[:2]])
    return one, two


def _decode_measuring_the_cache(adapter, method, prompt):
    """decode, and the draft cache's length read off the cache itself after every draft forward."""
    proposer = method.make_proposer(adapter, None)
    lengths = []
    step = proposer.eager_step  # the eager engine runs every draft forward through it

    def measured(*args, **kwargs):
        out = step(*args, **kwargs)
        lengths.append(proposer.cache.get_seq_length())
        return out

    proposer.eager_step = measured
    return decode(adapter, prompt, proposer, 8, GREEDY).draft_cost, lengths


def _draft_kv_bytes_per_entry(draft) -> int:
    """K and V of one entry, from the layers' own projections (not from the config draft_cost reads)."""
    element = next(draft.parameters()).element_size()
    return sum(2 * layer.self_attn.k_proj.out_features * element for layer in draft.layers)


def test_image_pairs_are_those_whose_next_token_is_an_image_token():
    # Pair i = (h_i, e_{i+1}): an image at tokens [s, e) is carried by pairs s - 1 ... e - 2.
    for spans, num_pairs in (([(3, 8)], 10), ([(0, 5)], 10), ([(1, 4), (4, 9)], 9), ([(2, 6), (7, 10)], 10)):
        brute = sum(any(s <= i + 1 < e for s, e in spans) for i in range(num_pairs))
        assert image_pair_count(spans, num_pairs) == brute, (spans, num_pairs)
    assert image_pair_count([(0, 5)], 10) == 4  # an image at token 0: its first token ends no pair


def test_draft_cost_of_each_method_with_one_and_two_images():
    _, adapter = tiny_by_name("tiny-llava")
    prompts = _prompts(adapter)
    methods = {name: prepared(name, adapter, draft="random") for name in ("eagle2", "vispec-noadaptor")}
    methods["vispec"] = prepared("vispec", adapter, draft="random", num_q=3)  # 2 compressed tokens per image
    for prompt in prompts:
        image_tokens = sum(end - start for start, end in prompt.image_spans)
        length = int(prompt.input_ids.shape[0])
        assert image_tokens == 16 * len(prompt.image_spans)  # tiny-llava: 16 tokens per image, none at token 0
        # The pairs whose next token (input_ids[1:], then the first generated token) is an image token.
        assert image_tokens == int((prompt.input_ids[1:] == adapter.image_token_id).sum())
        expected = {"eagle2": (image_tokens, length), "vispec-noadaptor": (image_tokens, length),
                    "vispec": (2 * prompt.num_images, length - image_tokens + 2 * prompt.num_images)}
        for name, method in methods.items():
            cost, lengths = _decode_measuring_the_cache(adapter, method, prompt)
            visual, pairs = expected[name]
            assert (cost["visual_tokens"], cost["prompt_pairs"]) == (visual, pairs), (name, prompt.num_images, cost)
            # The peak is the cache's own largest length, tree nodes included: above the prompt's pairs.
            assert cost["kv_tokens"] == max(lengths) > pairs, (name, cost, max(lengths))
            assert cost["kv_bytes"] == cost["kv_tokens"] * _draft_kv_bytes_per_entry(method.draft)
            assert cost.get("compression") == ("adaptor:2/image" if name == "vispec" else None)
    # A decode that ends with its first token (EOS or a cap of 1) never starts the draft: nothing held.
    assert decode(adapter, prompts[0], methods["eagle2"].make_proposer(adapter, None), 1, GREEDY).draft_cost == {
        "visual_tokens": 0, "kv_tokens": 0, "kv_bytes": 0, "prompt_pairs": 0}
    # ViSpec's count is the splice's compressed rows.
    proposer = methods["vispec"].make_proposer(adapter, None)
    prefill = adapter.prefill(prompts[1])
    proposer.prefill_pairs(prompts[1], prefill, int(prefill.logits.argmax()))
    assert proposer.draft_visual_tokens == int(proposer.prompt_direct.sum()) == 4


def test_records_carry_draft_cost_and_the_report_shows_it_old_records_too(tmp_path):
    loaded, _ = tiny_by_name("tiny-llava")
    config = RunConfig(model="tiny-llava", methods=["eagle2", "medusa", "ngram"], limit=1, max_new_tokens=8,
                       dtype="float32", device="cpu", warmup=False, profile_rounds=False,
                       method_args=["eagle2.draft=random", "medusa.draft=random"])
    run_dir = Runner(config, out_dir=tmp_path, run_id="r", progress=False, log=lambda m: None,
                     model_loader=lambda *args, **kwargs: loaded).run()
    records = {r["method"]: r for r in load_records(run_dir / "records.jsonl")}
    assert records["ar"]["draft_cost"] is None
    assert records["medusa"]["draft_cost"] == records["ngram"]["draft_cost"] == {
        "visual_tokens": 0, "kv_tokens": 0, "kv_bytes": 0}
    eagle = records["eagle2"]["draft_cost"]
    assert eagle["visual_tokens"] == 16 and eagle["kv_tokens"] > records["eagle2"]["prompt_tokens"]
    summary = json.loads((run_dir / "summary.json").read_text())["methods"]
    assert summary["eagle2"]["draft_visual_tokens"] == 16
    assert summary["eagle2"]["draft_kv_mib"] == eagle["kv_bytes"] / 2 ** 20
    assert summary["medusa"]["draft_kv_tokens"] == 0 and summary["ar"]["draft_visual_tokens"] is None

    table = _table(write_report([run_dir], tmp_path / "report"))
    header = table[0].split(" | ")
    columns = [header.index(label) for label in ("draft visual", "draft KV tok", "draft KV MiB")]
    assert columns == [header.index("vs best AR (e2e)") + i for i in (1, 2, 3)]  # beside the speedups
    rows = {row.split(" | ")[header.index("method")]: row.split(" | ") for row in table[1:]}
    assert [rows["eagle2"][i] for i in columns] == ["16", str(eagle["kv_tokens"]), f"{eagle['kv_bytes'] / 2 ** 20:.2f}"]
    assert [rows["ar"][i] for i in columns] == ["—"] * 3 and [rows["ngram"][i] for i in columns] == ["0", "0", "0.00"]

    # Records written before the field existed: the report still renders, with "—".
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(run_dir / "manifest.json", old / "manifest.json")
    with gzip.open(old / "records.jsonl.gz", "wt") as handle:
        for record in records.values():
            handle.write(json.dumps({k: v for k, v in record.items() if k != "draft_cost"}) + "\n")
    table = _table(write_report([old], tmp_path / "old-report"))
    assert all(row.split(" | ")[i] == "—" for row in table[1:] for i in columns) and len(table) == 1 + 4


def _table(report_dir) -> list[str]:
    """The report's main table (the Method differences table that may follow is another block)."""
    lines = (report_dir / "index.md").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| "))
    block = itertools.takewhile(lambda line: line.startswith("|"), lines[first:])
    return [line for line in block if line.startswith("| ")]
