"""`python -m vispec_bench testbed build`: train the testbed's vision side and its drafts from a seed.

Stages, each resumable (re-running the command continues where it stopped; a finished stage
is skipped), all under a work directory (default $VISPEC_BENCH_CACHE/testbed-build/seed<K>):

1. pretrain — the CLIP-style tower alone learns the image's shape and colour: two linear
   probes read *every* patch feature of the layer the projector uses, so each of the 64 image
   tokens carries the whole image's labels (labels from the easy-VQA *train* questions, see
   suites.easyvqa.image_labels). Cheap (no language model). A first build probed only the mean
   patch feature: the language model then never learned to read shapes (held-out open shape
   questions ~21 %, it answered "circle") — shape is spread over patches, colour is not.
2. vision — tower + projector (and, with `lora_rank` > 0, LoRA factors on SmolLM2's q/v
   projections) learn with LLaVA's loss on the one-word answers of easy-VQA train questions,
   in the suite's short-answer prompt; the base language-model weights stay frozen. Stops at
   `vision_steps` or as soon as the held-out accuracy (test questions, first answer token,
   teacher-forced) reaches `vision_target`. The weights are then rounded to bf16 — the form
   that ships — and every later stage uses exactly that target (LoRA merged at load).
3. data — the target answers easy-VQA train questions in long-answer mode (gen-data).
4. drafts — Medusa, EAGLE-2, then ViSpec (stage 2, initialised from the EAGLE-2 draft), all
   through `train` with a reduced draft vocabulary (token map from the generated answers).
5. install — bf16 safetensors into vispec_bench/models/testbed/weights/ with provenance.json.

Why LoRA: with SmolLM2 frozen, the held-out accuracy plateaued near 69 % (step 300 of the
first build; open shape/colour questions 16-30 %), far from the 90 % target (README).
"""

from __future__ import annotations

import json
import platform
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from vispec_bench.results.records import append_jsonl
from vispec_bench.running.config import BuildConfig
from vispec_bench.models.testbed.model import LORA_TARGETS, WEIGHTS_DIR, lora_key, testbed_loader

TRAINABLE = ("model.vision_tower.", "model.multi_modal_projector.")
DRAFT_METHODS = ("medusa", "eagle2", "vispec")


class StageLog:
    def __init__(self, work: Path):
        self.path = work / "build_log.jsonl"

    def __call__(self, **entry) -> None:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **entry}
        append_jsonl(self.path, entry)
        print(" ".join(f"{k}={v}" for k, v in entry.items()), file=sys.stderr, flush=True)


def _done(work: Path, stage: str) -> dict | None:
    marker = work / f"{stage}.done.json"
    return json.loads(marker.read_text()) if marker.exists() else None


def _mark_done(work: Path, stage: str, info: dict) -> None:
    (work / f"{stage}.done.json").write_text(json.dumps(info, indent=2) + "\n")


# --- data ---------------------------------------------------------------------------------

def _pixel_values(processor, paths: list[str]) -> torch.Tensor:
    from PIL import Image

    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return processor.image_processor(images, return_tensors="pt")["pixel_values"]


class ShortAnswerExamples:
    """easy-VQA questions as (input ids, answer ids) in the suite's short-answer prompt."""

    def __init__(self, processor, split: str):
        import easy_vqa

        from suites.easyvqa import EasyVQA

        self.suite = EasyVQA("short", split=split)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.paths = easy_vqa.get_train_image_paths() if split == "train" else easy_vqa.get_test_image_paths()
        self._pixels: dict[int, torch.Tensor] = {}  # image id -> processed image, filled on first use
        self.end_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self._prompts: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self.suite.questions)

    def prompt_ids(self, index: int) -> list[int]:
        return self.image_prompt_ids(self.suite.prompt_text(self.suite.questions[index]))

    def image_prompt_ids(self, text: str) -> list[int]:
        """Chat prompt ids of one image + `text`, the image expanded to the tower's 64 patch tokens."""
        if text not in self._prompts:  # the prompt does not depend on the image: tokenise each text once
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            self._prompts[text] = self.processor(text=prompt, images=[self.pixels_image_stub()],
                                                 return_tensors="pt")["input_ids"][0].tolist()
        return self._prompts[text]

    def pixels_image_stub(self):
        from PIL import Image

        return Image.new("RGB", (64, 64))

    def answer_ids(self, index: int) -> list[int]:
        return self.tokenizer(self.suite.answers[index], add_special_tokens=False)["input_ids"] + [self.end_id]

    def batch(self, indices: list[int], with_answer: bool, device: str, extra=()):
        """Short-answer examples by index, plus `extra` (image id, prompt ids, answer ids) triples."""
        sequences, label_masks = [], []
        for index in indices:
            prompt = self.prompt_ids(index)
            answer = self.answer_ids(index) if with_answer else []
            sequences.append(prompt + answer)
            label_masks.append([False] * len(prompt) + [True] * len(answer))
        for _, prompt, answer in extra:
            sequences.append(list(prompt) + list(answer))
            label_masks.append([False] * len(prompt) + [True] * len(answer))
        image_ids = [int(self.suite.image_ids[i]) for i in indices] + [int(image_id) for image_id, _, _ in extra]
        width = max(map(len, sequences))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        attention = torch.zeros((len(sequences), width), dtype=torch.long)
        labels = torch.full((len(sequences), width), -100, dtype=torch.long)
        for row, (sequence, mask) in enumerate(zip(sequences, label_masks)):
            input_ids[row, :len(sequence)] = torch.tensor(sequence)
            attention[row, :len(sequence)] = 1
            labels[row, :len(sequence)] = torch.where(torch.tensor(mask), torch.tensor(sequence), -100)
        missing = sorted({i for i in image_ids if i not in self._pixels})
        if missing:
            for image_id, pixels in zip(missing, _pixel_values(self.processor, [self.paths[i] for i in missing])):
                self._pixels[image_id] = pixels
        pixels = torch.stack([self._pixels[i] for i in image_ids])
        return (input_ids.to(device), attention.to(device), labels.to(device), pixels.to(device),
                [len(s) for s in sequences])


# --- stage 1: tower pretraining -----------------------------------------------------------

def pretrain_tower(model, processor, config: BuildConfig, work: Path, device: str, log: StageLog) -> dict:
    import easy_vqa
    from tqdm.auto import tqdm

    from suites.easyvqa import COLORS, SHAPES, image_labels

    tower = model.model.vision_tower
    paths = easy_vqa.get_train_image_paths()
    pixels = _pixel_values(processor, [paths[i] for i in range(len(paths))]).to(device)
    labels = image_labels("train")
    shape = torch.tensor([SHAPES.index(labels.get(i, {}).get("shape")) if "shape" in labels.get(i, {}) else -100
                          for i in range(len(paths))], device=device)
    color = torch.tensor([COLORS.index(labels[i]["color"]) if "color" in labels.get(i, {}) else -100
                          for i in range(len(paths))], device=device)
    hidden = tower.config.hidden_size
    probes = nn.ModuleDict({"shape": nn.Linear(hidden, len(SHAPES)), "color": nn.Linear(hidden, len(COLORS))}).to(device)
    params = list(tower.parameters()) + list(probes.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(config.seed)
    held_out = torch.arange(len(paths))[-200:]  # the last 200 train images check the probes
    train_ids = torch.arange(len(paths))[:-200]

    def features(batch):  # [B, patches, H]: the layer LLaVA's projector reads, patch tokens only
        return tower(pixel_values=batch, output_hidden_states=True).hidden_states[-2][:, 1:]

    def probe_loss(states, name, target):
        logits = probes[name](states)  # every patch predicts the image's label
        labels = target[:, None].expand(-1, states.shape[1])
        return nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)

    tower.train()
    for step in tqdm(range(config.pretrain_steps), desc="testbed pretrain tower"):
        batch = train_ids[torch.randint(len(train_ids), (config.pretrain_batch,), generator=generator)]
        states = features(pixels[batch])
        loss = probe_loss(states, "shape", shape[batch]) + probe_loss(states, "color", color[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    tower.eval()
    with torch.no_grad():
        states = features(pixels[held_out])
        result = {}
        for name, target in (("shape", shape), ("color", color)):
            known = target[held_out] != -100
            guess = probes[name](states).argmax(-1)  # [B, patches]
            hits = (guess == target[held_out][:, None]).float().mean(dim=1)  # share of patches that know it
            result[f"probe_{name}_accuracy_per_patch"] = round(float(hits[known].mean()), 4)
    log(stage="pretrain", steps=config.pretrain_steps, loss=round(float(loss.detach()), 4), **result)
    return result


# --- stage 2: tower + projector with the frozen language model -----------------------------

@torch.no_grad()
def first_token_accuracy(model, examples: ShortAnswerExamples, indices: list[int], device: str,
                         batch_size: int = 16) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        input_ids, attention, _, pixels, lengths = examples.batch(chunk, with_answer=False, device=device)
        logits = model(input_ids=input_ids, attention_mask=attention, pixel_values=pixels).logits
        last = logits[torch.arange(len(chunk)), torch.tensor(lengths) - 1]
        for row, index in enumerate(chunk):
            correct += int(last[row].argmax()) == examples.answer_ids(index)[0]
    return correct / len(indices)


@torch.no_grad()
def long_answer_examples(model, processor, examples: ShortAnswerExamples, count: int, max_tokens: int,
                         seed: int, device: str) -> list[tuple[int, list[int], list[int]]]:
    """Long-answer targets written by the *base* SmolLM2 from a text description of the image.

    LoRA trained on one-word answers alone teaches the model to answer in one word even when
    the prompt asks for an explanation (measured: 4.6 tokens per long-mode answer). So stage 2
    also sees long-mode prompts whose targets are what SmolLM2 itself writes when told, in
    words, what the image shows ("The image shows a teal circle."): the image then stands in for
    the description (the LLaVA recipe of distilling a text model's answers, with SmolLM2 as the
    text model). Must run before LoRA hooks are attached. Returns (image id, prompt ids with the
    image, answer ids) triples.
    """
    from suites.easyvqa import image_labels

    from vispec_bench.drafts.datagen import greedy_answers
    from vispec_bench.plugins.suite import LONG_ANSWER_INSTRUCTION

    labels = image_labels("train")
    suite = examples.suite
    candidates = [i for i in range(len(suite.questions))
                  if {"shape", "color"} <= set(labels.get(int(suite.image_ids[i]), {}))]
    chosen = random.Random(seed + 2).sample(candidates, min(count, len(candidates)))
    triples = []
    for start in range(0, len(chosen), 16):
        chunk = chosen[start:start + 16]
        described = []
        for index in chunk:
            label = labels[int(suite.image_ids[index])]
            text = (f"The image shows a {label['color']} {label['shape']}.\n"
                    f"{suite.questions[index]}\n{LONG_ANSWER_INSTRUCTION}")
            described.append([{"role": "user", "content": text}])
        answers = greedy_answers(model, processor, described, [[] for _ in chunk], max_tokens, [examples.end_id],
                                 device, torch.float32)
        for index, (answer, _) in zip(chunk, answers):
            prompt_ids = examples.image_prompt_ids(f"{suite.questions[index]}\n{LONG_ANSWER_INSTRUCTION}")
            triples.append((int(suite.image_ids[index]), prompt_ids, answer))
    return triples


class LanguageLoRA(nn.Module):
    """LoRA factors on the language model's q/v projections, applied by forward hooks (the model's
    own modules and state-dict keys stay untouched); exported pre-scaled, merged at load time."""

    def __init__(self, model, rank: int):
        super().__init__()
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()
        self.handles = []
        generator = torch.Generator().manual_seed(1234)
        for index, layer in enumerate(model.model.language_model.layers):
            for projection in LORA_TARGETS:
                linear = getattr(layer.self_attn, projection)
                key = f"{index}_{projection}"
                a = torch.randn(rank, linear.in_features, generator=generator) / linear.in_features ** 0.5
                self.A[key] = nn.Parameter(a.to(linear.weight.device))
                self.B[key] = nn.Parameter(torch.zeros(linear.out_features, rank, device=linear.weight.device))
                self.handles.append(linear.register_forward_hook(self._hook(key)))

    def _hook(self, key):
        def add_delta(module, inputs, output):
            return output + nn.functional.linear(nn.functional.linear(inputs[0], self.A[key].to(output.dtype)),
                                                 self.B[key].to(output.dtype))
        return add_delta

    def export(self) -> dict[str, torch.Tensor]:
        out = {}
        for key in self.A:
            index, projection = key.split("_", 1)
            out[lora_key(int(index), projection, "A")] = self.A[key].detach()
            out[lora_key(int(index), projection, "B")] = self.B[key].detach()
        return out

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def train_vision(model, processor, config: BuildConfig, work: Path, device: str, log: StageLog) -> dict:
    from tqdm.auto import tqdm

    state_path = work / "vision_state.pt"
    trained = TRAINABLE if config.vision_train_tower else ("model.multi_modal_projector.",)
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(trained))
    long_examples = []
    if config.vision_long_examples:
        cached = work / "long_examples.json"
        if cached.exists():
            long_examples = [tuple(t) for t in json.loads(cached.read_text())]
        else:
            model.eval()
            long_examples = long_answer_examples(model, processor, ShortAnswerExamples(processor, "train"),
                                                 config.vision_long_examples, 96, config.seed, device)
            cached.write_text(json.dumps(long_examples))
        lengths = [len(t[2]) for t in long_examples]
        log(stage="vision", long_examples=len(long_examples), mean_long_answer_tokens=round(sum(lengths) / len(lengths), 1))
    lora = LanguageLoRA(model, config.lora_rank) if config.lora_rank else None
    params = [p for p in model.parameters() if p.requires_grad] + (list(lora.parameters()) if lora else [])
    optimizer = torch.optim.AdamW(params, lr=config.vision_lr, weight_decay=0.0)
    train = ShortAnswerExamples(processor, "train")
    test = ShortAnswerExamples(processor, "test")
    eval_indices = sorted(random.Random(config.seed).sample(range(len(test)), config.eval_questions))
    start, best = 0, {}
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["weights"], strict=False)
        if lora is not None and state.get("lora"):
            lora.load_state_dict(state["lora"])
        try:
            optimizer.load_state_dict(state["optimizer"])
        except ValueError:  # the trained parameter set changed (LoRA added): a fresh optimizer
            log(stage="vision", note="optimizer state does not fit the parameters; starting a fresh optimizer")
        start, best = state["step"], state["eval"]
        log(stage="vision", resumed_at=start)
    else:
        best = {"step": 0, "accuracy": first_token_accuracy(model, test, eval_indices, device)}
        log(stage="vision", step=0, eval_accuracy=best["accuracy"])
    order = list(range(len(train)))
    random.Random(config.seed + 1).shuffle(order)
    bar = tqdm(range(start, config.vision_steps), desc="testbed vision", initial=start, total=config.vision_steps)
    started = time.time()
    for step in bar:
        if best.get("accuracy", 0.0) >= config.vision_target:
            break
        lr = config.vision_lr * min(1.0, (step + 1) / 20)
        for group in optimizer.param_groups:
            group["lr"] = lr
        num_long = config.vision_batch // 4 if long_examples else 0  # 2 of 8: long-answer distillation
        chunk = [order[(step * config.vision_batch + j) % len(order)] for j in range(config.vision_batch - num_long)]
        extra = [long_examples[(step * num_long + j) % len(long_examples)] for j in range(num_long)]
        input_ids, attention, labels, pixels, _ = train.batch(chunk, with_answer=True, device=device, extra=extra)
        model.train()
        # bf16 autocast: the frozen language model dominates the step (1.4x faster on 2 CPU cores);
        # the trained weights stay float32 and evaluation runs in float32
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            loss = model(input_ids=input_ids, attention_mask=attention, pixel_values=pixels, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", acc=f"{best.get('accuracy', 0):.3f}")
        done = step + 1
        if done % config.eval_every == 0 or done == config.vision_steps:
            accuracy = first_token_accuracy(model, test, eval_indices, device)
            best = {"step": done, "accuracy": accuracy}
            weights = {k: v.detach().cpu() for k, v in model.state_dict().items() if k.startswith(TRAINABLE)}
            log(stage="vision", step=done, loss=round(float(loss.detach()), 4), eval_accuracy=round(accuracy, 4),
                elapsed_s=round(time.time() - started, 1))
            torch.save({"weights": weights, "lora": lora.state_dict() if lora else None,
                        "optimizer": optimizer.state_dict(), "step": done, "eval": best},
                       state_path.with_suffix(".tmp"))
            state_path.with_suffix(".tmp").replace(state_path)
    return best, (lora.export() if lora else {})


def save_vision_weights(model, lora_factors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach() for k, v in model.state_dict().items() if k.startswith(TRAINABLE)}
    state = {k: v.to(torch.bfloat16).contiguous().cpu() for k, v in {**state, **lora_factors}.items()}
    save_file(state, str(path.with_suffix(".tmp")), metadata={"format": "pt"})
    path.with_suffix(".tmp").replace(path)


# --- stage 3: draft training data ----------------------------------------------------------

TEXT_TEMPLATES = (
    "Describe a {color} {shape} to someone who cannot see it.",
    "Write a short story about a {color} {shape}.",
    "Explain what a {shape} is and where you might see one in everyday life.",
    "What feelings or ideas do people associate with the color {color}? Explain.",
    "Compare a {shape} with a {other_shape}: how are they alike and how do they differ?",
    "Write a few sentences teaching a child to draw a {color} {shape}.",
)


def text_instructions(count: int, seed: int):
    """Text-only instructions (no image) from templates over easy-VQA's shape and colour words: the
    part of the draft data that teaches the draft the target's plain-text style (ViSpec stage 1)."""
    from suites.easyvqa import COLORS, SHAPES

    from vispec_bench.plugins.suite import Sample

    rng = random.Random(seed)
    samples = []
    for index in range(count):
        shape, other = rng.sample(SHAPES, 2)
        text = rng.choice(TEXT_TEMPLATES).format(color=rng.choice(COLORS), shape=shape, other_shape=other)
        samples.append(Sample(f"text-{index}", [{"role": "user", "content": text}], [], []))
    return samples


def generate_draft_data(config: BuildConfig, work: Path, device: str) -> dict:
    from vispec_bench.drafts.datagen import GenDataConfig, generate_data

    gen = GenDataConfig(model="testbed", suite="easyvqa", split="train", prompt_mode="long",
                        limit=config.data_samples, seed=config.seed, max_new_tokens=config.data_max_new_tokens,
                        dtype="float32", device=device, batch_size=16)
    path = generate_data(gen, work / "data", extra_samples=text_instructions(config.data_samples // 5, config.seed),
                         model_loader=testbed_loader(work / "weights"))
    from vispec_bench.drafts.datagen import load_training_rows

    rows = load_training_rows(path)
    lengths = [len(ids) for ids in rows["answer_ids"]]
    return {"rows": len(lengths), "mean_answer_tokens": round(sum(lengths) / len(lengths), 1),
            "text_only_rows": sum(1 for i in rows["sample_id"] if i.startswith("text-"))}


# --- stage 4: drafts -----------------------------------------------------------------------

def train_drafts(config: BuildConfig, work: Path, device: str, log: StageLog) -> None:
    from vispec_bench.drafts.training import TrainConfig, train

    for method in DRAFT_METHODS:
        if _done(work, f"draft-{method}"):
            continue
        started = time.time()
        out = work / "drafts" / method
        init = str(work / "drafts" / "eagle2") if method == "vispec" else None  # ViSpec stage 2 from stage 1
        steps = config.draft_steps // 2 if method == "vispec" else config.draft_steps
        train_config = TrainConfig(method=method, model="testbed", data=str(work / "data"), out=str(out), steps=steps,
                                   lr=1e-3, eval_every=max(50, steps // 6), save_every=100, seed=config.seed,
                                   dtype="float32", device=device, init=init,
                                   method_args=[f"{method}.vocab={config.draft_vocab}"],
                                   resume=(out / "trainer_state.pt").exists())
        train(train_config, log=lambda message: log(stage=f"draft-{method}", message=message),
              model_loader=testbed_loader(work / "weights"))
        accuracy = json.loads((out / "draft_config.json").read_text())["training"]["eval_accuracy"]
        _mark_done(work, f"draft-{method}", {"steps": steps, "eval_accuracy": accuracy,
                                             "seconds": round(time.time() - started, 1)})


# --- stage 5: install ----------------------------------------------------------------------

def install(config: BuildConfig, work: Path, device: str, command: str, target: Path = WEIGHTS_DIR) -> Path:
    """bf16 weights into the package (vispec_bench/models/testbed/weights) with how they were made."""
    import shutil

    import transformers

    from vispec_bench.drafts.checkpoints import load_draft, save_draft
    from vispec_bench.running.environment import capture

    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy(work / "weights" / "vision.safetensors", staging / "vision.safetensors")
    for method in DRAFT_METHODS:
        checkpoint = load_draft(work / "drafts" / method)
        save_draft(staging / "drafts" / method, checkpoint.state_dict, checkpoint.config, dtype=torch.bfloat16)
    stages = {path.name.removesuffix(".done.json"): json.loads(path.read_text())
              for path in sorted(work.glob("*.done.json"))}
    # Stage-level lines of the build log (not per-step ones): they show every resume and
    # eval, so a build made in several runs says so next to its weights.
    log_path = work / "build_log.jsonl"
    history = [entry for entry in map(json.loads, log_path.read_text().splitlines() if log_path.exists() else [])
               if "message" not in entry]
    provenance = {"command": command, "build_config": asdict(config), "device": device,
                  "environment": capture(device), "torch": torch.__version__,
                  "transformers": transformers.__version__, "python": platform.python_version(),
                  "stages": stages, "history": history, "installed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "total_seconds": round(sum(s.get("seconds", 0) for s in stages.values()), 1),
                  "bytes": {str(p.relative_to(staging)): p.stat().st_size for p in sorted(staging.rglob("*")) if p.is_file()}}
    (staging / "provenance.json").write_text(json.dumps(provenance, indent=2, default=str) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


# --- the build ----------------------------------------------------------------------------

STAGE_SETTINGS = {"pretrain": ("seed", "pretrain_steps", "pretrain_batch"),
                  "vision": ("vision_steps", "vision_batch", "vision_lr", "vision_target", "vision_train_tower",
                             "lora_rank", "vision_long_examples", "eval_every", "eval_questions"),
                  "data": ("data_samples", "data_max_new_tokens"),
                  "draft-medusa": ("draft_vocab", "draft_steps"), "draft-eagle2": ("draft_vocab", "draft_steps"),
                  "draft-vispec": ("draft_vocab", "draft_steps")}


def _check_settings(config: BuildConfig, work: Path) -> None:
    """A finished stage must not be reused under settings that would have changed it."""
    path = work / "build_config.json"
    settings = asdict(config)
    if path.exists():
        stored = json.loads(path.read_text())
        changed = {k for k in settings if k not in ("install", "device", "work") and stored.get(k) != settings[k]}
        clashes = sorted(k for stage, keys in STAGE_SETTINGS.items() if _done(work, stage) for k in keys if k in changed)
        if clashes:
            raise ValueError(f"{work} holds finished stages built with other settings ({', '.join(clashes)}: "
                             f"{ {k: stored.get(k) for k in clashes} }); pass another --work or delete it to start over")
    path.write_text(json.dumps(settings, indent=2) + "\n")


def build(config: BuildConfig, command: str = "") -> Path:
    from vispec_bench.models.loading import resolve_device
    from vispec_bench.models.testbed.model import build_untrained_testbed

    device = resolve_device(config.device)
    work = config.work_dir()
    work.mkdir(parents=True, exist_ok=True)
    _check_settings(config, work)
    log = StageLog(work)
    torch.manual_seed(config.seed)
    weights = work / "weights"  # later stages load `--model testbed` from here (testbed_loader)

    if not (weights / "vision.safetensors").exists():
        started = time.time()
        model, processor = build_untrained_testbed(dtype=torch.float32, device=device, seed=config.seed)
        info = _done(work, "pretrain")
        if info is None:
            info = pretrain_tower(model, processor, config, work, device, log)
            torch.save({k: v.cpu() for k, v in model.state_dict().items() if k.startswith(TRAINABLE)},
                       work / "pretrain_weights.pt")
            _mark_done(work, "pretrain", {**info, "seconds": round(time.time() - started, 1)})
        elif not (work / "vision_state.pt").exists():
            model.load_state_dict(torch.load(work / "pretrain_weights.pt", weights_only=True), strict=False)
        result, lora_factors = train_vision(model, processor, config, work, device, log)
        save_vision_weights(model, lora_factors, weights / "vision.safetensors")
        _mark_done(work, "vision", {**result, "seconds": round(time.time() - started, 1)})
        del model
    if _done(work, "data") is None:
        started = time.time()
        info = generate_draft_data(config, work, device)
        _mark_done(work, "data", {**info, "seconds": round(time.time() - started, 1)})
        log(stage="data", **info)
    train_drafts(config, work, device, log)
    if config.install:
        installed = install(config, work, device, command)
        log(stage="install", directory=str(installed))
    return work
