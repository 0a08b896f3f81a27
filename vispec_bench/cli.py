"""Command line: `python -m vispec_bench list|run`. `list` imports no torch."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = _run_defaults()
    parser.add_argument("--model", default=defaults["model"],
                        help="registered name (see `list --models`), local checkpoint directory, or hub id")
    parser.add_argument("--methods", default=",".join(defaults["methods"]),
                        help="comma-separated methods; ar always runs as the baseline")
    parser.add_argument("--ablations", action="store_true",
                        help="also run ViSpec's ablations (vispec-noadaptor, vispec-noglobal)")
    parser.add_argument("--suite", default=defaults["suite"])
    parser.add_argument("--prompt-mode", choices=["short", "long"], default=defaults["prompt_mode"],
                        help="short answers (the suite's post-prompt) or long answers (the papers' setting)")
    parser.add_argument("--fixtures", action="store_true",
                        help="use the suite's bundled offline rows (real column schema, generated images)")
    parser.add_argument("--dataset-path", default=None, help="hub id or local directory instead of the suite's")
    parser.add_argument("--dataset-name", default=None, help="dataset config name")
    parser.add_argument("--split", default=None)
    parser.add_argument("--revision", default=None, help="dataset revision (commit, tag or branch)")
    parser.add_argument("--limit", type=int, default=defaults["limit"], help="number of samples (fixed-seed choice)")
    parser.add_argument("--max-new-tokens", type=int, default=defaults["max_new_tokens"])
    parser.add_argument("--temperature", type=float, default=defaults["temperature"], help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=defaults["top_p"])
    parser.add_argument("--top-k", type=int, default=defaults["top_k"], help="0 = off")
    parser.add_argument("--seed", type=int, default=defaults["seed"])
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default=defaults["dtype"],
                        help="auto = bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--device", default=defaults["device"], help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--method-args", nargs="*", default=[], metavar="METHOD.KEY=VALUE",
                        help="method options, e.g. oracle.depth=6")
    parser.add_argument("--no-warmup", action="store_false", dest="warmup",
                        help="skip the untimed warm-up decode of each method")
    parser.add_argument("--repeats", type=int, default=defaults["repeats"],
                        help="timed passes over all samples; the speedup's spread across them is reported")
    parser.add_argument("--no-profile", action="store_false", dest="profile_rounds",
                        help="skip the untimed profiling pass that splits rounds into draft/verify/accept time")
    parser.add_argument("--out", default="runs", help="directory that receives runs/<run_id>/")
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--resume", default=None, metavar="RUN_DIR",
                        help="continue an interrupted run; finished samples are kept, not redone")
    parser.add_argument("--no-progress", action="store_true")


def _run_defaults() -> dict:
    import dataclasses

    from vispec_bench.running.config import RunConfig

    return {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
            for f in dataclasses.fields(RunConfig)}


def cmd_list(args) -> int:
    from vispec_bench.plugins.registry import METHODS, MODELS, SUITES

    chosen = [(flag, reg) for flag, reg in (("methods", METHODS), ("suites", SUITES), ("models", MODELS))
              if getattr(args, flag)] or [("methods", METHODS), ("suites", SUITES), ("models", MODELS)]
    for title, registry in chosen:
        print(f"{title}:")
        for entry in registry.entries():
            source = "" if entry.source == "builtin" else f"  [{entry.source}]"
            print(f"  {entry.name:<18} {entry.summary}{source}")
    return 0


EXTRA_SCORE_LABELS = {"names_shape_or_color": "names_shape/color"}


def format_summary(summary: dict) -> str:
    """The CLI table: the columns marked `cli` in the column table (intervals in brackets), then the
    suite's extra scores, then any unpaired records, named."""
    from vispec_bench.results.columns import COLUMNS, format_cell
    from vispec_bench.results.metrics import summary_rows

    columns = [c for c in COLUMNS if c.cli]
    extra = sorted({k for m in summary["methods"].values() for k in m.get("extra_scores") or {}})
    header = [c.label for c in columns] + [EXTRA_SCORE_LABELS.get(k, k) for k in extra]
    rows = []
    for row in summary_rows(summary):
        scores = row["_details"].get("extra_scores") or {}
        rows.append([format_cell(c, row) for c in columns] +
                    ["-" if scores.get(k) is None else f"{scores[k]:.2f}" for k in extra])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [f"{summary['model']} on {summary['suite']} ({summary['dtype']}, {summary['device']}); "
             "[95 % bootstrap interval over samples]",
             "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in rows]
    for u in summary.get("unpaired", []):
        lines.append(f"unpaired: {u['method']} sample {u['sample_id']} repeat {u['repeat']}: {u['why']} "
                     "(excluded from every figure)")
    return "\n".join(lines)


def cmd_run(args) -> int:
    from vispec_bench.running.config import RunConfig
    from vispec_bench.running.runner import Runner

    methods = args.methods.split(",")
    if args.ablations:
        methods += [m for m in ("vispec-noadaptor", "vispec-noglobal") if m not in methods]
    config = RunConfig(model=args.model, methods=methods, suite=args.suite,
                       prompt_mode=args.prompt_mode, fixtures=args.fixtures, dataset_path=args.dataset_path,
                       dataset_name=args.dataset_name, split=args.split, revision=args.revision, limit=args.limit, max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                       dtype=args.dtype, device=args.device, method_args=args.method_args, warmup=args.warmup,
                       repeats=args.repeats, profile_rounds=args.profile_rounds)
    runner = Runner(config, out_dir=args.out, run_id=args.run_id, resume=args.resume,
                    progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
    run_dir = runner.run()
    if not runner.dist.is_main:  # under torchrun, rank 0 reports for everyone
        return 0
    summary = json.loads((run_dir / "summary.json").read_text())
    print(format_summary(summary))
    shards = "records.rank*.jsonl" if runner.dist.enabled else "records.jsonl"
    print(f"\nrecords: {run_dir}/{shards}\nsummary: {run_dir}/summary.json")
    return 0


def cmd_gen_data(args) -> int:
    from vispec_bench.drafts.datagen import GenDataConfig, generate_data

    config = GenDataConfig(model=args.model, suite=args.suite, split=args.split, fixtures=args.fixtures,
                           prompt_mode=args.prompt_mode,
                           prompt_suffix=args.prompt_suffix, limit=args.limit, seed=args.seed,
                           max_new_tokens=args.max_new_tokens, dtype=args.dtype, device=args.device,
                           batch_size=args.batch_size)
    path = generate_data(config, args.out, progress=not args.no_progress)
    print(f"training data: {path}")
    return 0


def cmd_train(args) -> int:
    from vispec_bench.drafts.training import TrainConfig, train

    config = TrainConfig(method=args.method, model=args.model, data=args.data, out=args.out, steps=args.steps,
                         lr=args.lr, warmup_steps=args.warmup_steps, grad_clip=args.grad_clip,
                         eval_fraction=args.eval_fraction, eval_every=args.eval_every, save_every=args.save_every,
                         seed=args.seed, dtype=args.dtype, device=args.device, init=args.init,
                         method_args=args.method_args + ([f"{args.method}.mtp_steps={args.mtp_steps}"]
                                                         if args.mtp_steps is not None else []),
                         resume=args.resume)
    path = train(config, progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
    if os.environ.get("RANK", "0") == "0":  # under accelerate launch, process 0 reports
        print(f"draft checkpoint: {path}")
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from vispec_bench.results.report import find_runs, write_report

    run_dirs = find_runs(args.runs, args.runs_root)
    out = Path(args.out or f"reports/report-{__import__('time').strftime('%Y%m%d-%H%M%S')}")
    write_report(run_dirs, out)
    print(f"report of {len(run_dirs)} run(s): {out}/index.html, {out}/index.md, {out}/summary.csv")
    return 0


def cmd_check(args) -> int:
    from vispec_bench.results.check import run_check

    return run_check(args.target, args.baseline, args.max_speedup_drop, args.max_tau_drop,
                     write=args.write_baseline, strict=args.strict)


def cmd_testbed_build(args) -> int:
    from vispec_bench.models.loading import resolve_device
    from vispec_bench.running.runner import command_line
    from vispec_bench.running.config import BuildConfig
    from vispec_bench.models.testbed.build import build

    fields = BuildConfig.__dataclass_fields__
    config = BuildConfig(**{k: v for k, v in vars(args).items() if k in fields})
    config.device = resolve_device(config.device)
    work = build(config, command=command_line())
    print(f"testbed build finished; work directory {work}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vispec_bench",
                                     description="Benchmark speculative decoding for vision-language models.")
    sub = parser.add_subparsers(dest="command")
    p_list = sub.add_parser("list", help="list registered methods, suites and models")
    p_list.add_argument("--methods", action="store_true")
    p_list.add_argument("--suites", action="store_true")
    p_list.add_argument("--models", action="store_true")
    p_list.set_defaults(func=cmd_list)
    p_run = sub.add_parser("run", help="benchmark methods against AR on a suite")
    _add_run_arguments(p_run)
    p_run.set_defaults(func=cmd_run)

    p_report = sub.add_parser("report", help="turn runs into index.md, index.html, summary.csv and plots")
    p_report.add_argument("runs", nargs="*", help="run directories or folders of runs (default: the latest run "
                                                   "of each model/suite/dtype/device under --runs-root)")
    p_report.add_argument("--runs-root", default="runs")
    p_report.add_argument("--out", default=None, help="report directory (default reports/report-<time>)")
    p_report.set_defaults(func=cmd_report)

    p_check = sub.add_parser("check", help="compare a run or report with a baseline; exit 1 on a regression")
    p_check.add_argument("target", metavar="RUN_OR_REPORT")
    p_check.add_argument("--baseline", default="reports/baseline.json")
    p_check.add_argument("--max-speedup-drop", type=float, default=0.10, help="relative, e.g. 0.10 = 10 %%")
    p_check.add_argument("--max-tau-drop", type=float, default=0.02, help="relative, e.g. 0.02 = 2 %%")
    p_check.add_argument("--write-baseline", action="store_true", help="create or update the baseline from the run")
    p_check.add_argument("--strict", action="store_true", help="also fail when entries are not comparable")
    p_check.set_defaults(func=cmd_check)

    p_gen = sub.add_parser("gen-data", help="let the target answer suite prompts: training data for drafts")
    p_gen.add_argument("--model", required=True)
    p_gen.add_argument("--suite", default="easyvqa")
    p_gen.add_argument("--split", default="train", help="suite split to draw prompts from (not the benchmark's)")
    p_gen.add_argument("--fixtures", action="store_true", help="the suite's bundled offline rows")
    p_gen.add_argument("--prompt-mode", choices=["short", "long"], default="long")
    p_gen.add_argument("--prompt-suffix", default="",
                       help='appended to each question, e.g. "Please answer with at least 1000 words."')
    p_gen.add_argument("--limit", type=int, default=64)
    p_gen.add_argument("--seed", type=int, default=0)
    p_gen.add_argument("--max-new-tokens", type=int, default=256)
    p_gen.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    p_gen.add_argument("--device", default="auto")
    p_gen.add_argument("--batch-size", type=int, default=1,
                       help="> 1: HF generate on left-padded batches (faster; ids may differ from the engine's at near-ties)")
    p_gen.add_argument("--out", required=True, help="directory; an interrupted run resumes there")
    p_gen.add_argument("--no-progress", action="store_true")
    p_gen.set_defaults(func=cmd_gen_data)

    p_train = sub.add_parser("train", help="train a draft (eagle2, medusa, vispec) on gen-data output")
    p_train.add_argument("--method", required=True)
    p_train.add_argument("--model", required=True, help="the target the draft is trained for")
    p_train.add_argument("--data", required=True, help="a gen-data output directory")
    p_train.add_argument("--out", required=True, help="checkpoint directory (draft.safetensors + draft_config.json)")
    p_train.add_argument("--steps", type=int, default=300)
    p_train.add_argument("--lr", type=float, default=1e-3)
    p_train.add_argument("--warmup-steps", type=int, default=20)
    p_train.add_argument("--grad-clip", type=float, default=0.5)
    p_train.add_argument("--eval-fraction", type=float, default=0.1)
    p_train.add_argument("--eval-every", type=int, default=50)
    p_train.add_argument("--save-every", type=int, default=100)
    p_train.add_argument("--seed", type=int, default=0)
    p_train.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="float32",
                         help="the target's dtype; the draft always trains in float32")
    p_train.add_argument("--device", default="auto")
    p_train.add_argument("--init", default=None, help="start from this checkpoint (e.g. an EAGLE-2 draft)")
    p_train.add_argument("--method-args", nargs="*", default=[], metavar="METHOD.KEY=VALUE")
    p_train.add_argument("--mtp-steps", type=int, default=None,
                         help="extra passes feeding the draft its own predicted features (eagle2, vispec)")
    p_train.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p_train.add_argument("--no-progress", action="store_true")
    p_train.set_defaults(func=cmd_train)

    p_testbed = sub.add_parser("testbed", help="the embedded testbed VLM (SmolLM2-135M + a trained vision tower)")
    testbed_sub = p_testbed.add_subparsers(dest="testbed_command", required=True)
    p_build = testbed_sub.add_parser("build", help="train the vision tower, generate draft data, train the drafts, "
                                                   "install the weights (resumable: re-run to continue)")
    from vispec_bench.running.config import BuildConfig  # torch-free, like every parser default

    defaults = BuildConfig()
    p_build.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p_build.add_argument("--seed", type=int, default=0)
    p_build.add_argument("--work", default="", help="work directory (default $VISPEC_BENCH_CACHE/testbed-build/seed<K>)")
    for name in ("pretrain_steps", "vision_steps", "vision_batch", "vision_target", "vision_long_examples", "eval_questions",
                 "data_samples", "data_max_new_tokens", "draft_vocab", "draft_steps"):
        value = getattr(defaults, name)
        p_build.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    p_build.add_argument("--train-tower", action="store_true", dest="vision_train_tower",
                         help="stage 2 also trains the vision tower (default: only projector + LoRA)")
    p_build.add_argument("--no-install", action="store_false", dest="install",
                         help="leave the package's weights alone (the results stay in the work directory)")
    p_build.set_defaults(func=cmd_testbed_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `python -m vispec_bench`: the default benchmark
        args = parser.parse_args(["run", *(argv or [])])
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
