"""`train`: the draft training loop shared by every draft method.

Each step takes one generated conversation, runs the frozen target over prompt + answer once
(teacher forcing) to get its hidden states and input embeddings, and asks the method's
trainer for a loss. The method owns the recipe (EAGLE: feature regression + soft CE with
feature noise; Medusa: CE per head; ViSpec: EAGLE's plus its vision parts); this loop owns
the optimiser (AdamW, betas 0.9/0.95), linear warm-up then cosine decay, gradient clipping,
held-out top-1 accuracy per draft depth / head, periodic checkpoints and `--resume`.

Several processes: `accelerate launch --num_processes N [--cpu] -m vispec_bench train ...`.
Each process holds the frozen target and a draft replica, trains on its own share of the rows,
and after every backward the gradients are averaged across processes (DDP's arithmetic). We do
not wrap the draft in DDP's module: EAGLE/ViSpec training runs the draft several times per
step (its mtp_steps passes) and calls the adaptor outside its forward, which DDP's hooks do
not allow. Process 0 evaluates, logs and writes checkpoints, which load on one device.

Offline (`--data DIR`) the answers are gen-data's, stored; online (`--online`, SpecVLM's
online logit distillation; vispec_bench/drafts/online.py) the target writes them during the run
and the teacher signals are recomputed at every step. Both feed the same `TeacherFeatures` to
the method's own trainer, so the loss is the method's: for the EAGLE family (eagle2, eaglevlm,
vispec: EagleTrainer.loss) 1.0 * SmoothL1(draft feature, target feature) + 0.1 * soft
cross-entropy against the target's distribution (its frozen lm_head on its feature), the
"cross-entropy + Smooth L1" objective SpecVLM names; Medusa's is cross-entropy per head.

`--epochs E` sets steps = E x the training rows of one process (the largest share when the rows
do not divide evenly: a smaller share then starts its next pass a step early). An epoch
listed in `--snapshot-epochs` ends with a loadable copy of the draft in OUT/epoch-N/.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vispec_bench.errors import ExistingOutputError, InputError, MissingInputError
from vispec_bench.engine.adapter import make_adapter
from vispec_bench.drafts.checkpoints import check_target, load_draft, save_draft
from vispec_bench.drafts.datagen import load_training_rows
from vispec_bench.drafts.feature_cache import FeatureDir, row_key
from vispec_bench.drafts.online import OnlineAnswers, TrainingAnswers, data_prompts, suite_prompts
from vispec_bench.drafts.resume_state import load_state, restore_rng_state, rng_state, save_state
from vispec_bench.drafts.vocab import BUFFER, set_token_map, token_map_of
from vispec_bench.results.records import append_jsonl
from vispec_bench.plugins.draft_training import DraftTraining
from vispec_bench.plugins.method import make_method, parse_method_args
from vispec_bench.models.loading import load_model, resolve_device, resolve_dtype
from vispec_bench.running.config import TrainConfig  # defined torch-free, with its flags' help

STATE = "trainer_state.pt"
LOG = "train_log.jsonl"


@dataclass
class TeacherFeatures:
    """The target's view of one prompt + answer, all on the draft's device in float32."""

    input_ids: torch.Tensor  # [T]
    input_embeds: torch.Tensor  # [T, H] decoder input embeddings (image embeddings at image positions)
    hidden: torch.Tensor  # [T, H] last hidden states after the final norm
    loss_mask: torch.Tensor  # [T] bool: True at answer positions (what the draft is asked to predict)
    prompt_length: int
    image_spans: list[tuple[int, int]] = field(default_factory=list)
    # [T, k * H] inputs of the decoder layers the adapter captures (adapter.capture_layers; EAGLE-3), else None
    layer_features: torch.Tensor | None = None


@torch.no_grad()
def teacher_features(adapter, messages: list[dict], images: list, answer_ids: list[int]) -> TeacherFeatures:
    """Prefill the prompt, then run the answer through the decoder exactly as decoding does
    (token embeddings, positions continuing after the prompt, Qwen2.5-VL's rope offset)."""
    prompt = adapter.build_prompt(messages, images)
    prefill = adapter.prefill(prompt)
    prompt_layers = adapter.layer_features  # [S, k * H] when a method asked the adapter for them, else None
    answer = torch.tensor(list(answer_ids), dtype=torch.long, device=adapter.device)
    _, answer_hidden = adapter.forward(answer, logits=False)
    ids = torch.cat([prompt.input_ids, answer])
    embeds = torch.cat([prefill.input_embeds, adapter.embed_tokens(answer)])
    hidden = torch.cat([prefill.hidden, answer_hidden])
    mask = torch.arange(ids.shape[0], device=adapter.device) >= prompt.input_ids.shape[0]
    layers = None if prompt_layers is None else torch.cat([prompt_layers, adapter.layer_features]).float()
    return TeacherFeatures(ids, embeds.float(), hidden.float(), mask, prompt.input_ids.shape[0], prompt.image_spans,
                           layers)


def frozen_float_lm_head(adapter) -> nn.Linear:
    """A float32 copy of the target's lm_head: the draft trains in float32 whatever the target dtype."""
    weight = adapter.lm_head.weight.detach().float()
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device)
    head.weight.data.copy_(weight)
    head.requires_grad_(False)
    return head


def split_rows(sample_ids: list[str], eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = list(range(len(sample_ids)))
    random.Random(seed).shuffle(order)
    num_eval = max(1, round(len(order) * eval_fraction)) if len(order) > 1 else 0
    return sorted(order[num_eval:]), sorted(order[:num_eval])


def lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))  # cosine down to 10 %


class FeatureSource:
    """Offline: teacher features of gen-data's stored answers, cached up to a memory budget and,
    with `feature_dir` (a drafts.feature_cache.FeatureDir), read from and written to disk."""

    def __init__(self, adapter, dataset, budget_mb: int, feature_dir=None):
        self.adapter, self.dataset, self.feature_dir = adapter, dataset, feature_dir
        self.cache: dict[int, TeacherFeatures] = {}
        self.budget_bytes, self.used_bytes = budget_mb * 2 ** 20, 0

    def __getitem__(self, index: int) -> TeacherFeatures:
        if index in self.cache:
            return self.cache[index]
        row = self.dataset[index]
        images = [image.convert("RGB") for image in row["images"]]
        features = self._from_disk(row, images)
        if features is None:
            features = teacher_features(self.adapter, json.loads(row["messages"]), images, row["answer_ids"])
            if self.feature_dir is not None:
                self.feature_dir.store(row_key(row["messages"], images, row["answer_ids"]), features)
        size = (features.hidden.numel() * 2 + (0 if features.layer_features is None
                                                else features.layer_features.numel())) * 4
        if self.used_bytes + size <= self.budget_bytes:
            self.cache[index] = features
            self.used_bytes += size
        return features

    def _from_disk(self, row, images) -> TeacherFeatures | None:
        if self.feature_dir is None:
            return None
        fields = self.feature_dir.load(row_key(row["messages"], images, row["answer_ids"]), row["answer_ids"])
        return None if fields is None else TeacherFeatures(**fields)


class OnlineFeatureSource:
    """Online: the target's answer (generated on first use, then kept: online.OnlineAnswers) and
    teacher features recomputed at every access — nothing cached, so every step distils
    hidden states and logits computed on the fly."""

    def __init__(self, adapter, prompts, answers):
        self.adapter, self.prompts, self.answers = adapter, prompts, answers

    def __getitem__(self, index: int) -> TeacherFeatures:
        messages, images = self.prompts[index]
        return teacher_features(self.adapter, messages, images, self.answers[index])


def evaluate(trainer, source: FeatureSource | OnlineFeatureSource, indices: list[int]) -> dict[str, float]:
    totals: dict[str, list[int]] = {}
    for index in indices:
        for key, (correct, count) in trainer.accuracy(source[index]).items():
            pair = totals.setdefault(key, [0, 0])
            pair[0] += correct
            pair[1] += count
    return {f"acc_{key}": correct / count for key, (correct, count) in sorted(totals.items()) if count}


def average_gradients(parameters: list[torch.nn.Parameter], world: int) -> None:
    """Mean of every gradient over the processes (what DDP's reducer computes). A parameter that
    got no gradient on a process contributes zeros, so every process reduces the same tensors."""
    for param in parameters:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        torch.distributed.all_reduce(param.grad, op=torch.distributed.ReduceOp.SUM)
        param.grad /= world


def train(config: TrainConfig, progress: bool = True, log=print, model_loader=None) -> Path:
    """`model_loader`: load_model (the default), or one with builder options bound (`testbed
    build` points the testbed at its work directory's weights)."""
    from tqdm.auto import tqdm

    from accelerate import Accelerator

    config.check()
    out = Path(config.out)
    accelerator = Accelerator(cpu=resolve_device(config.device) == "cpu")
    device = str(accelerator.device)
    is_main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    dtype = resolve_dtype(config.dtype, device)
    torch.manual_seed(config.seed)  # the same initial draft on every process
    raw_args = parse_method_args(config.method_args, [config.method]).get(config.method, {})
    method = make_method(config.method, raw_args)
    if not isinstance(method, DraftTraining):
        raise InputError(f"method {config.method!r} has no draft to train")
    if config.online:  # the prompts only; the answers are the target's, written during the run
        prompts = (data_prompts(config.data) if config.data is not None else
                   suite_prompts(config.suite, config.prompt_mode, config.split, config.fixtures, config.limit,
                                 config.seed, config.prompt_suffix))
        sample_ids, prompt_source = prompts.sample_ids, prompts.source
    else:
        dataset = load_training_rows(config.data)
        sample_ids, prompt_source = list(dataset["sample_id"]), {"data": str(config.data)}
    if len(sample_ids) == 0:
        raise InputError(f"{config.data or config.suite} holds no training rows")
    train_rows, eval_rows = split_rows(sample_ids, config.eval_fraction, config.seed)
    if len(train_rows) < world:
        raise InputError(f"{len(train_rows)} training rows cannot be shared by {world} processes")
    my_rows = train_rows[rank::world]  # this process's share
    steps_per_epoch = len(train_rows[0::world])  # the largest share: every process runs the same steps
    total_steps = config.total_steps(steps_per_epoch)
    snapshots = config.snapshots(steps_per_epoch)  # {step: epoch}
    state_path = out / STATE
    if config.resume and not state_path.exists():
        raise MissingInputError(f"--resume: {state_path} does not exist; nothing to resume")
    if not config.resume and (out / "draft.safetensors").exists():  # before any answer is generated
        raise ExistingOutputError(f"{out} already holds a checkpoint; pass --resume to continue it or use a new --out")
    loaded = (model_loader or load_model)(config.model, dtype, device, seed=config.seed)
    adapter = make_adapter(loaded.model, loaded.processor)
    for param in loaded.model.parameters():
        param.requires_grad_(False)
    draft = method.build_draft(adapter).to(device=device, dtype=torch.float32)
    if config.init:
        initial = load_draft(config.init)
        check_target(initial, adapter, method.draft_kind, method.compatible_checkpoints)
        method.load_checkpoint(draft, initial, source=config.init)
    method.prepare_teacher(adapter, draft)
    if config.online:
        answers = OnlineAnswers(adapter, prompts, config.max_new_tokens)
        source = OnlineFeatureSource(adapter, prompts, answers)
        answer_rows = TrainingAnswers(answers, my_rows, world)  # generated only if fit_to_data reads them
    else:
        answers = None
        feature_dir = FeatureDir(config.feature_dir, adapter, log) if config.feature_dir else None
        if feature_dir is not None and is_main:
            log(f"teacher features on disk: {feature_dir}")
        source = FeatureSource(adapter, dataset, config.feature_cache_mb, feature_dir)
        answer_rows = dataset["answer_ids"]
    if not config.resume and token_map_of(draft) is None:
        method.fit_to_data(draft, answer_rows, adapter)  # e.g. the reduced draft vocabulary
    trainer = method.make_trainer(draft, frozen_float_lm_head(adapter))
    optimizer = torch.optim.AdamW([p for p in draft.parameters() if p.requires_grad], lr=config.lr,
                                  betas=(0.9, 0.95), weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config.warmup_steps, total_steps))
    start_step = 0
    seconds_before = 0.0  # training seconds of earlier runs, up to the checkpoint this one resumes
    if config.resume:
        state = load_state(state_path, required=("step", "optimizer", "scheduler", "rng"))
        seconds_before = float(state.get("train_seconds", 0.0))
        saved = load_draft(out).state_dict
        set_token_map(draft, saved.get(BUFFER))
        draft.load_state_dict(saved)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step = state["step"]
        restore_rng_state(state["rng"], device)
        log(f"resuming training at step {start_step} of {total_steps}"
            + (" (online: the answers are regenerated as the prompts come up)" if config.online else ""))
    accelerator.wait_for_everyone()  # nobody writes before every process has checked the output directory
    if is_main:
        out.mkdir(parents=True, exist_ok=True)

    def generation() -> dict:
        """Answers generated in this run and the seconds spent on them, summed over processes.
        A collective under several processes: every process calls it at the same steps."""
        mine = (answers.num_generated, answers.generation_s) if answers is not None else (0, 0.0)
        if config.online and world > 1:
            shares = [None] * world
            torch.distributed.all_gather_object(shares, mine)
            mine = (sum(n for n, _ in shares), sum(t for _, t in shares))
        return {"online": config.online, "answers_generated": mine[0], "generation_s": round(mine[1], 3)}

    def training_info(step: int, accuracy: dict, generated: dict) -> dict:
        info = method.checkpoint_config(adapter)
        info["training"] = {"step": step, "steps": total_steps, "epochs": config.epochs,
                            "steps_per_epoch": steps_per_epoch, "data": config.data,
                            "prompt_source": prompt_source, "seed": config.seed, "lr": config.lr,
                            "init": config.init, "eval_accuracy": accuracy, "num_train_rows": len(train_rows),
                            "num_eval_rows": len(eval_rows), "num_processes": world, **generated}
        if config.online:
            info["training"]["max_new_tokens"] = config.max_new_tokens
        return info

    def checkpoint(step: int, accuracy: dict, generated: dict) -> None:
        save_draft(out, draft.state_dict(), training_info(step, accuracy, generated))
        # train_seconds: the loop's seconds up to this checkpoint over every run, so a run interrupted
        # after it counts its work once (work after it is lost and redone, counted when redone)
        save_state(state_path, {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                "rng": rng_state(device),
                                "train_seconds": round(seconds_before + time.time() - started, 1)})

    def snapshot(step: int, epoch: int, accuracy: dict, generated: dict) -> None:
        """OUT/epoch-N: the draft as it is at the end of epoch N, loadable like OUT itself. A
        resumed run that passes the same epoch again rewrites it (the same trajectory: same
        rows, order and restored RNG)."""
        info = training_info(step, accuracy, generated)
        info["training"]["epoch"] = epoch
        save_draft(out / f"epoch-{epoch}", draft.state_dict(), info)

    def write_log(entry: dict) -> None:
        append_jsonl(out / LOG, entry)

    def evaluate_on_main() -> dict:
        result = {}
        if is_main:
            draft.eval()
            result = evaluate(trainer, source, eval_rows)
            draft.train()
        accelerator.wait_for_everyone()
        return result

    draft.train()
    accuracy = {}
    if start_step == 0:
        accuracy = evaluate_on_main()
        generated = generation()
        if is_main:
            write_log({"step": 0, "prompt_source": prompt_source, **generated, **accuracy})
    bar = tqdm(range(start_step, total_steps), desc=f"train {config.method}", disable=not (progress and is_main),
               initial=start_step, total=total_steps)
    started = time.time()
    parameters = [p for p in draft.parameters() if p.requires_grad]
    for step in bar:
        epoch, position = divmod(step, len(my_rows))
        order = list(my_rows)
        random.Random(config.seed * 7919 + epoch * 104729 + rank).shuffle(order)
        features = source[order[position]]
        loss, logs = trainer.loss(features)
        if not torch.is_tensor(loss):  # a row with no answer tokens: a zero loss keeps every process in step
            loss = sum(p.sum() for p in parameters) * 0.0
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            average_gradients(parameters, world)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip))
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        done = step + 1
        evaluated = done % config.eval_every == 0 or done == total_steps or done in snapshots
        saved = done % config.save_every == 0 or done == total_steps
        if evaluated:
            accuracy = evaluate_on_main()
        if evaluated or saved or done in snapshots:
            generated = generation()  # after the evaluation: it may have answered a held-out prompt
        if evaluated:
            if is_main:
                entry = {"step": done, "loss": float(loss.detach()), "grad_norm": grad_norm,
                         "lr": scheduler.get_last_lr()[0], "elapsed_s": round(time.time() - started, 1),
                         "num_processes": world, **generated, **logs, **accuracy}
                if done in snapshots:
                    entry["epoch"] = snapshots[done]
                write_log(entry)
                log(f"step {done}: loss {float(loss.detach()):.4f} " + " ".join(f"{k} {v:.3f}"
                                                                                for k, v in accuracy.items()))
        if saved or done in snapshots:
            if is_main:
                if saved:
                    checkpoint(done, accuracy, generated)
                if done in snapshots:
                    snapshot(done, snapshots[done], accuracy, generated)
                    log(f"epoch {snapshots[done]} ends at step {done}: snapshot {out / f'epoch-{snapshots[done]}'}")
            accelerator.wait_for_everyone()
    bar.close()
    if world > 1:  # the replicas must still be identical: each applied the same averaged gradients
        checksum = float(sum(p.detach().double().sum() for p in parameters))
        checksums = [None] * world
        torch.distributed.all_gather_object(checksums, checksum)
        if is_main:
            write_log({"step": total_steps, "replica_checksums": checksums})
        if max(checksums) - min(checksums) > 1e-6 * max(1.0, abs(checksum)):
            raise RuntimeError(f"draft replicas diverged across processes: {checksums}")
    if start_step >= total_steps:
        log("already trained for the requested steps")
    return out
