"""Training-time scaling (SpecVLM, arXiv 2509.11815): τ of each draft against its training epochs.

    PYTHONPATH=. python reports/training_scaling.py --model testbed \\
        eagle2=W/eagle2 vispec=W/vispec --samples 32 --max-new-tokens 256

Each METHOD=OUT_DIR names a `train --snapshot-epochs ...` output: its OUT_DIR/epoch-N/ snapshots
are that method's drafts after N epochs (`train --online --epochs E --snapshot-epochs 1,2,4,8`
writes them). Every snapshot decodes the same easy-VQA test samples (long-answer prompts, a
fixed-seed choice; the training prompts come from the train split) greedily, float32, on the
eager engine, with the method's default tree for the device, through the benchmark's engine
(`vispec_bench.engine.decode.decode`, as `run` decodes): the target is loaded once and AR is
decoded once for all snapshots, which a `run` per snapshot would repeat. τ needs no timing.

τ = Σ emitted tokens / Σ rounds over the samples (the `mean_accepted_length` of `run`'s
summary), with its 95 % bootstrap interval over samples (vispec_bench/results/uncertainty.py).
Every snapshot's ids are compared with AR's (greedy speculative decoding is lossless).

Writes OUT/scaling.json (settings, environment, per method and epoch: τ, interval, draft
sha256, per-sample emitted/rounds), OUT/scaling.png (τ against epochs, log2 x-axis, one line
per method with its intervals) and OUT/README.md. OUT defaults to reports/<--name>.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

import numpy as np

from vispec_bench.drafts.provenance import draft_provenance
from vispec_bench.engine.acceptance import SamplingConfig
from vispec_bench.engine.adapter import make_adapter
from vispec_bench.engine.decode import decode
from vispec_bench.errors import InputError, UserError
from vispec_bench.models.loading import load_model, resolve_device, resolve_dtype
from vispec_bench.plugins.method import make_method
from vispec_bench.plugins.suite import make_suite
from vispec_bench.results.uncertainty import ratio_ci
from vispec_bench.running.environment import capture

GREEDY = SamplingConfig()


def snapshots_of(out_dir: Path) -> list[tuple[int, Path]]:
    """(epoch, directory) of OUT_DIR/epoch-N, by epoch; the epoch is checked against draft_config.json."""
    found = []
    for path in out_dir.iterdir() if out_dir.is_dir() else ():
        match = re.fullmatch(r"epoch-(\d+)", path.name)
        if match is None:
            continue
        recorded = json.loads((path / "draft_config.json").read_text())["training"].get("epoch")
        if recorded != int(match.group(1)):
            raise InputError(f"{path}: its draft_config.json records epoch {recorded}, not {match.group(1)}")
        found.append((int(match.group(1)), path))
    if not found:
        raise InputError(f"{out_dir} holds no epoch-N snapshots: train it with --epochs E --snapshot-epochs 1,2,...")
    return sorted(found)


def parse_pairs(pairs: list[str]) -> dict[str, Path]:
    methods = {}
    for pair in pairs:
        name, sep, directory = pair.partition("=")
        if not sep or not name or not directory:
            raise InputError(f"expected METHOD=OUT_DIR, got {pair!r}")
        if name in methods:
            raise InputError(f"method {name!r} given twice")
        methods[name] = Path(directory)
    return methods


def measure(adapter, method_name: str, draft: Path, prompts, ar_ids, cap: int) -> dict:
    method = make_method(method_name, {"draft": str(draft)})
    method.prepare(adapter)
    emitted, rounds, same = [], [], 0
    for prompt, reference in zip(prompts, ar_ids):
        result = decode(adapter, prompt, method.make_proposer(adapter, None), cap, GREEDY)
        emitted.append(sum(result.accepted_lengths))
        rounds.append(result.num_rounds)
        same += result.new_ids == reference
    emitted_arr, rounds_arr = np.array(emitted, dtype=float), np.array(rounds, dtype=float)
    training = json.loads((draft / "draft_config.json").read_text())["training"]
    return {"epoch": training.get("epoch"), "step": training["step"], "online": training.get("online", False),
            "tau": float(emitted_arr.sum() / rounds_arr.sum()), "tau_ci": ratio_ci(emitted_arr, rounds_arr),
            "exact_match": same, "eval_accuracy": training.get("eval_accuracy"),
            "draft": draft_provenance(draft, "option"), "options": method.describe()["options"],
            "runtime_settings": method.runtime_settings(),
            "emitted": emitted, "rounds": rounds}


def plot(path: Path, results: dict, references: dict | None = None) -> None:
    """τ against epochs per method; `references` (method -> a point of a draft trained otherwise,
    e.g. offline) are drawn as dashed lines in their method's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for name, points in results.items():
        epochs = [p["epoch"] for p in points]
        taus = [p["tau"] for p in points]
        low = [p["tau"] - p["tau_ci"][0] if p["tau_ci"] else 0.0 for p in points]
        high = [p["tau_ci"][1] - p["tau"] if p["tau_ci"] else 0.0 for p in points]
        line = axes.errorbar(epochs, taus, yerr=[low, high], marker="o", capsize=3, label=f"{name} (online)")
        reference = (references or {}).get(name)
        if reference is not None:
            axes.axhline(reference["tau"], linestyle="--", color=line[0].get_color(), alpha=0.7,
                         label=f"{name} offline, {reference['step']} steps")
    all_epochs = sorted({p["epoch"] for points in results.values() for p in points})
    axes.set_xscale("log", base=2)
    axes.set_xticks(all_epochs, [str(e) for e in all_epochs])
    axes.set_xlabel("training epochs")
    axes.set_ylabel("τ (mean accepted length)")
    axes.set_title("training-time scaling (95 % bootstrap intervals)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _ci(values) -> str:
    return "n/a" if values is None else f"[{values[0]:.3f}, {values[1]:.3f}]"


def write_markdown(path: Path, results: dict, settings: dict, environment: dict, references: dict | None = None) -> None:
    n = settings["samples"]
    lines = [
        "# Training-time scaling: τ against training epochs",
        "",
        f"Command: `{settings['command']}`",
        "",
        f"Model `{settings['model']}`, float32, eager engine on {environment['device_name']}; torch "
        f"{environment['packages']['torch']}, transformers {environment['packages']['transformers']}; commit "
        f"{(environment['git'].get('commit') or '?')[:12]}{' (dirty)' if environment['git'].get('dirty') else ''}. "
        f"{n} easy-VQA test samples (long answers, seed {settings['seed']}), cap {settings['max_new_tokens']} new "
        "tokens, greedy. Each draft is a `train --snapshot-epochs` snapshot (OUT_DIR/epoch-N); τ = emitted tokens / "
        "rounds over all samples, with its 95 % bootstrap interval over samples.",
        "",
        "| method | epoch | step | training | τ | 95 % CI | ids = AR |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, points in results.items():
        for p in points:
            lines.append(f"| {name} | {p['epoch']} | {p['step']} | {'online' if p['online'] else 'offline'} | "
                         f"{p['tau']:.3f} | {_ci(p['tau_ci'])} | {p['exact_match']}/{n} |")
    for name, p in (references or {}).items():
        lines.append(f"| {name} | — | {p['step']} | {'online' if p['online'] else 'offline'} (reference) | "
                     f"{p['tau']:.3f} | {_ci(p['tau_ci'])} | {p['exact_match']}/{n} |")
    lines += ["", "![τ against epochs](scaling.png)", "",
              "Raw numbers (per-sample emitted tokens and rounds, draft sha256): [scaling.json](scaling.json).", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("drafts", nargs="+", metavar="METHOD=OUT_DIR",
                        help="a method and a `train --snapshot-epochs` output directory holding epoch-N/ snapshots")
    parser.add_argument("--reference", nargs="*", default=[], metavar="METHOD=DRAFT_DIR",
                        help="a draft of the same method trained otherwise (e.g. offline), drawn as a dashed line")
    parser.add_argument("--model", default="testbed")
    parser.add_argument("--samples", type=int, default=32, help="easy-VQA test samples (fixed-seed choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--name", default="training-scaling", help="report folder under reports/")
    parser.add_argument("--out", default=None, help="output folder (default reports/<--name>)")
    args = parser.parse_args(argv)
    methods = parse_pairs(args.drafts)
    snapshots = {name: snapshots_of(directory) for name, directory in methods.items()}  # fail before loading
    reference_drafts = parse_pairs(args.reference)
    for name, directory in reference_drafts.items():
        if not (directory / "draft_config.json").exists():
            raise InputError(f"--reference {name}={directory}: no draft_config.json there")

    device = resolve_device(args.device)
    loaded = load_model(args.model, resolve_dtype("float32", device), device)
    adapter = make_adapter(loaded.model, loaded.processor)
    suite = make_suite("easyvqa", "long")  # the benchmark's split (test); training prompts come from train
    samples = suite.select(args.samples, args.seed)
    prompts = [adapter.build_prompt(s.messages, s.images) for s in samples]
    ar_ids = [decode(adapter, prompt, None, args.max_new_tokens, GREEDY).new_ids for prompt in prompts]
    results = {}
    for name, found in snapshots.items():
        results[name] = []
        for epoch, directory in found:
            point = measure(adapter, name, directory, prompts, ar_ids, args.max_new_tokens)
            results[name].append(point)
            print(f"{name} epoch {epoch}: tau {point['tau']:.3f} {_ci(point['tau_ci'])}, ids = AR on "
                  f"{point['exact_match']}/{len(samples)}", file=sys.stderr)

    references = {}
    for name, directory in reference_drafts.items():
        references[name] = measure(adapter, name, directory, prompts, ar_ids, args.max_new_tokens)
        print(f"{name} reference {directory}: tau {references[name]['tau']:.3f}", file=sys.stderr)

    environment = {k: v for k, v in capture(device).items() if k != "hostname"}
    settings = {"command": "PYTHONPATH=. python reports/training_scaling.py " + shlex.join(argv if argv is not None
                                                                                           else sys.argv[1:]),
                "model": args.model, "dtype": "float32", "engine": "eager", "device": device, "suite": "easyvqa",
                "prompt_mode": "long", "split": suite.split,
                "samples": len(samples), "sample_ids": [s.sample_id for s in samples], "seed": args.seed,
                "max_new_tokens": args.max_new_tokens, "drafts": {name: str(d) for name, d in methods.items()},
                "references": {name: str(d) for name, d in reference_drafts.items()}}
    out = Path(args.out) if args.out else Path(__file__).parent / args.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps({"settings": settings, "environment": environment,
                                                  "methods": results, "references": references}, indent=1) + "\n")
    plot(out / "scaling.png", results, references)
    write_markdown(out / "README.md", results, settings, environment, references)
    print((out / "README.md").read_text())


if __name__ == "__main__":
    try:
        main()
    except UserError as err:  # a missing snapshot, a malformed METHOD=OUT_DIR: one line, as the CLI says it
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
