"""Our `ngram` against Hugging Face's own prompt lookup, measured in one process on the same prompts.

    PYTHONPATH=. python reports/ngram_vs_hf.py --limit 32 --max-new-tokens 256

For each easy-VQA sample (long-answer prompts, a fixed-seed choice) four arms run back to back,
their order rotating from sample to sample, after an untimed warm-up:

  ours-ar     the engine with no proposer
  ours-ngram  the engine with `ngram`, HF-equivalent settings (max_ngram=M, min_ngram=1,
              num_draft=K, num_branches=1)
  hf-lookup   model.generate(prompt_lookup_num_tokens=K, max_matching_ngram_size=M,
              max_new_tokens=cap, do_sample=False)
  hf-greedy   model.generate(max_new_tokens=cap, do_sample=False)

All four get the same processed prompt (the processor runs once, untimed). A forward hook on the
language model counts target forwards, so every arm's tau is measured the same way: new tokens /
target forwards (prefill included; 1 for greedy decoding). Wall time is the whole call (prefill +
decode), synchronised at both ends. The ids of every arm are compared: ours-ar = hf-greedy
(the engine's correctness), ours-ngram = ours-ar and hf-lookup = hf-greedy (lossless), and
ours-ngram = hf-lookup. Means come with 95 % bootstrap intervals over samples
(vispec_bench/results/uncertainty.py); speed ratios are paired per sample.

Writes OUT/README.md (tables) and OUT/results.json (settings, environment, per-sample ids,
forwards, wall times). OUT defaults to reports/ngram-vs-hf.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vispec_bench.engine.acceptance import SamplingConfig
from vispec_bench.engine.adapter import make_adapter
from vispec_bench.engine.decode import decode
from vispec_bench.models.loading import load_model, resolve_device, resolve_dtype
from vispec_bench.plugins.method import make_method
from vispec_bench.results.uncertainty import ratio_ci, throughput_ratio_ci
from vispec_bench.running.environment import capture
from vispec_bench.running.instruments import synchronize

ARMS = ("ours-ar", "ours-ngram", "hf-lookup", "hf-greedy")
GREEDY = SamplingConfig()


class ForwardCounter:
    """Counts calls of the language model (one per target forward, ours and HF's alike)."""

    def __init__(self, module: torch.nn.Module):
        self.count = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.count += 1


def run_arm(arm: str, adapter, prompt, method, args, counter: ForwardCounter) -> dict:
    cap = args.max_new_tokens
    proposer = method.make_proposer(adapter, None) if arm == "ours-ngram" else None  # untimed, as in the runner
    counter.count = 0
    synchronize(adapter.device)
    start = time.perf_counter()
    if arm.startswith("ours"):
        result = decode(adapter, prompt, proposer, cap, GREEDY)
        ids = result.new_ids
    else:
        lookup = {"prompt_lookup_num_tokens": args.num_draft, "max_matching_ngram_size": args.max_ngram}
        out = adapter.model.generate(**prompt.model_inputs, max_new_tokens=cap, do_sample=False,
                                     **(lookup if arm == "hf-lookup" else {}))
        ids = out[0, prompt.input_ids.shape[0]:].tolist()
    synchronize(adapter.device)
    wall = time.perf_counter() - start
    row = {"ids": ids, "tokens": len(ids), "forwards": counter.count, "wall_s": wall}
    if arm.startswith("ours"):
        row.update(rounds=result.num_rounds, prefill_s=result.prefill_s, decode_s=result.decode_s,
                   mean_accepted_length=(sum(result.accepted_lengths) / result.num_rounds) if result.num_rounds else None)
    return row


def summarise(samples: list[dict]) -> dict:
    def column(arm, key):
        return np.array([s["arms"][arm][key] for s in samples], dtype=float)

    summary = {"n": len(samples), "arms": {}, "ratios": {}, "checks": {}}
    ones = np.ones(len(samples))
    for arm in ARMS:
        tokens, forwards, wall = column(arm, "tokens"), column(arm, "forwards"), column(arm, "wall_s")
        summary["arms"][arm] = {
            "tau": tokens.sum() / forwards.sum(), "tau_ci": ratio_ci(tokens, forwards),
            "accepted_per_sample": (tokens - forwards).mean(), "accepted_per_sample_ci": ratio_ci(tokens - forwards, ones),
            "tokens_per_s": tokens.sum() / wall.sum(), "tokens_per_s_ci": ratio_ci(tokens, wall),
            "wall_s": wall.mean(), "wall_s_ci": ratio_ci(wall, ones), "tokens": tokens.mean(),
        }
    pairs = {"ours-ngram / hf-lookup": ("ours-ngram", "hf-lookup"), "ours-ngram / ours-ar": ("ours-ngram", "ours-ar"),
             "hf-lookup / hf-greedy": ("hf-lookup", "hf-greedy"), "ours-ar / hf-greedy": ("ours-ar", "hf-greedy")}
    for label, (x, y) in pairs.items():
        tx, ty = column(x, "tokens"), column(y, "tokens")
        fx, fy = column(x, "forwards"), column(y, "forwards")
        wx, wy = column(x, "wall_s"), column(y, "wall_s")
        summary["ratios"][label] = {
            "speed": (tx.sum() / wx.sum()) / (ty.sum() / wy.sum()), "speed_ci": throughput_ratio_ci(tx, wx, ty, wy),
            "tau": (tx.sum() / fx.sum()) / (ty.sum() / fy.sum()), "tau_ci": throughput_ratio_ci(tx, fx, ty, fy),
        }
    for label, (x, y) in {"ours-ar = hf-greedy": ("ours-ar", "hf-greedy"),
                          "ours-ngram = ours-ar": ("ours-ngram", "ours-ar"),
                          "hf-lookup = hf-greedy": ("hf-lookup", "hf-greedy"),
                          "ours-ngram = hf-lookup": ("ours-ngram", "hf-lookup")}.items():
        summary["checks"][label] = sum(s["arms"][x]["ids"] == s["arms"][y]["ids"] for s in samples)
    summary["checks"]["same forwards, ours-ngram and hf-lookup"] = sum(
        s["arms"]["ours-ngram"]["forwards"] == s["arms"]["hf-lookup"]["forwards"] for s in samples)
    return summary


def _ci(values) -> str:
    return "n/a" if values is None else f"[{values[0]:.3f}, {values[1]:.3f}]"


def write_markdown(path: Path, summary: dict, settings: dict, environment: dict) -> None:
    n = summary["n"]
    lines = [
        "# `ngram` (ours) against Hugging Face's prompt lookup",
        "",
        f"Command: `{settings['command']}`",
        "",
        f"Model `{settings['model']}`, {settings['dtype']} on {environment['device_name']}; torch "
        f"{environment['packages']['torch']}, transformers {environment['packages']['transformers']}; commit "
        f"{(environment['git'].get('commit') or '?')[:12]}{' (dirty)' if environment['git'].get('dirty') else ''}. "
        f"{n} easy-VQA samples (long answers, seed {settings['seed']}), cap {settings['max_new_tokens']} new tokens, "
        f"greedy; lookup settings K = {settings['num_draft']} draft tokens, M = {settings['max_ngram']} "
        f"(ours: `ngram.num_draft={settings['num_draft']} ngram.max_ngram={settings['max_ngram']}`, min_ngram 1, "
        "one chain). Arms interleaved per sample in rotating order"
        + (f", after {settings['warmup']} untimed warm-up pass(es) of every arm. " if settings["warmup"] else
           ", with no warm-up (the first sample's times include first-call costs). ")
        + "Intervals: 95 % bootstrap over samples.",
        "",
        "τ = new tokens / target forwards (prefill included), counted by a forward hook on the language "
        "model for every arm; wall time = the whole call (prefill + decode).",
        "",
        "| arm | τ | 95 % CI | accepted draft tokens / sample | tokens/s | 95 % CI | wall s / sample | new tokens / sample |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        a = summary["arms"][arm]
        lines.append(f"| {arm} | {a['tau']:.3f} | {_ci(a['tau_ci'])} | {a['accepted_per_sample']:.1f} | "
                     f"{a['tokens_per_s']:.1f} | {_ci(a['tokens_per_s_ci'])} | {a['wall_s']:.3f} | {a['tokens']:.1f} |")
    lines += ["", "Paired ratios (same samples; speed = per-token throughput ratio):", "",
              "| ratio | speed | 95 % CI | τ | 95 % CI |", "|---|---|---|---|---|"]
    for label, r in summary["ratios"].items():
        lines.append(f"| {label} | {r['speed']:.3f} | {_ci(r['speed_ci'])} | {r['tau']:.3f} | {_ci(r['tau_ci'])} |")
    lines += ["", "Identical ids (samples out of " + str(n) + "):", ""]
    lines += [f"- {label}: {count}/{n}" for label, count in summary["checks"].items()]
    ratio = summary["ratios"]["ours-ngram / hf-lookup"]
    low = ratio["speed_ci"][0] if ratio["speed_ci"] else None
    same = summary["checks"]["same forwards, ours-ngram and hf-lookup"]
    lines += ["", "Verdict:", "",
              f"- τ: ours {summary['arms']['ours-ngram']['tau']:.3f}, HF {summary['arms']['hf-lookup']['tau']:.3f} "
              f"(the same number of target forwards on {same}/{n} samples)"
              + ("." if same == n else
                 ". Known causes of a difference: HF's earliest match followed by image tokens (HF drafts them, "
                 "we take the next match instead) and HF's first forward, which also verifies a draft looked up "
                 "in the prompt; the per-sample forwards are in results.json."),
              f"- speed: ours / HF = {ratio['speed']:.3f}, 95 % CI {_ci(ratio['speed_ci'])}: "
              + ("at least HF's (the interval excludes values below 1)." if low is not None and low >= 1 else
                 "the interval does not exclude a ratio below 1." if low is not None else "too few samples for an interval."),
              "", "Raw numbers (per sample ids, forwards, wall times): [results.json](results.json).", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="testbed")
    parser.add_argument("--limit", type=int, default=32, help="easy-VQA samples (fixed-seed choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--num-draft", type=int, default=10, help="K: HF's prompt_lookup_num_tokens, our num_draft")
    parser.add_argument("--max-ngram", type=int, default=2, help="M: HF's max_matching_ngram_size, our max_ngram")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", help="float32 (ids comparable across arms), bfloat16, auto")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes of every arm on the first sample")
    parser.add_argument("--out", default=str(Path(__file__).parent / "ngram-vs-hf"))
    args = parser.parse_args(argv)

    from suites.easyvqa import EasyVQA

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    loaded = load_model(args.model, dtype, device)
    adapter = make_adapter(loaded.model, loaded.processor)
    method = make_method("ngram", {"max_ngram": str(args.max_ngram), "min_ngram": "1",
                                   "num_draft": str(args.num_draft), "num_branches": "1"})
    method.prepare(adapter)
    counter = ForwardCounter(adapter.decoder)
    samples = EasyVQA(prompt_mode="long").select(args.limit, args.seed)
    prompts = [adapter.build_prompt(s.messages, s.images) for s in samples]

    for _ in range(args.warmup):
        for arm in ARMS:
            run_arm(arm, adapter, prompts[0], method, args, counter)
    rows = []
    for index, (sample, prompt) in enumerate(zip(samples, prompts)):
        order = ARMS[index % len(ARMS):] + ARMS[:index % len(ARMS)]
        arms = {arm: run_arm(arm, adapter, prompt, method, args, counter) for arm in order}
        rows.append({"sample_id": sample.sample_id, "prompt_tokens": int(prompt.input_ids.shape[0]),
                     "order": list(order), "arms": {arm: arms[arm] for arm in ARMS}})
        line = "  ".join(f"{arm} {arms[arm]['tokens']}/{arms[arm]['forwards']} {arms[arm]['wall_s']:.2f}s"
                         for arm in ARMS)
        print(f"[{index + 1}/{len(samples)}] {sample.sample_id}: {line}", file=sys.stderr)

    summary = summarise(rows)
    environment = {k: v for k, v in capture(device).items() if k != "hostname"}
    settings = {"command": "PYTHONPATH=. python reports/ngram_vs_hf.py " + shlex.join(argv if argv is not None
                                                                                       else sys.argv[1:]),
                "model": args.model, "dtype": str(dtype).removeprefix("torch."), "device": device,
                "suite": "easyvqa", "prompt_mode": "long", "limit": args.limit, "seed": args.seed,
                "max_new_tokens": args.max_new_tokens, "num_draft": args.num_draft, "max_ngram": args.max_ngram,
                "warmup": args.warmup, "ngram_options": method.describe()["options"]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"settings": settings, "environment": environment,
                                                  "summary": summary, "samples": rows}, indent=1, default=float))
    write_markdown(out / "README.md", summary, settings, environment)
    print((out / "README.md").read_text())


if __name__ == "__main__":
    main()
