"""Stage 2 of the testbed build: tower + projector (and LoRA on the frozen language model) learn
with LLaVA's loss on easy-VQA answers, stopping early at the held-out accuracy target; the best
held-out evaluation's weights are the ones the stage keeps."""

from __future__ import annotations

import json
import pickle
import random
import time
from pathlib import Path

import torch
from torch import nn

from vispec_bench.drafts.training import lr_factor
from vispec_bench.errors import InputError
from vispec_bench.models.testbed.build.common import TRAINABLE, StageLog
from vispec_bench.models.testbed.build.pretrain import fit_word_readout
from vispec_bench.models.testbed.build.vision_examples import ShortAnswerExamples, balanced_order, long_answer_examples
from vispec_bench.models.testbed.model import LORA_PROJECTIONS, LORA_TARGETS, lora_key, lora_linear, projector_in
from vispec_bench.running.config import BuildConfig


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



def check_lora_targets(targets) -> None:
    """Every name in `targets` is a projection LoRA can adapt (the build checks before its first stage)."""
    unknown = sorted(set(targets) - set(LORA_PROJECTIONS))
    if unknown:
        raise InputError(f"--lora-targets: no projection named {', '.join(unknown)}; "
                         f"choose from {', '.join(LORA_PROJECTIONS)}")


class LanguageLoRA(nn.Module):
    """LoRA factors on some of the language model's projections (`targets`, default q/v), applied by
    forward hooks (the model's own modules and state-dict keys stay untouched); exported pre-scaled,
    merged at load time."""

    def __init__(self, model, rank: int, targets=LORA_TARGETS):
        super().__init__()
        check_lora_targets(targets)
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()
        self.handles = []
        generator = torch.Generator().manual_seed(1234)
        for index, layer in enumerate(model.model.language_model.layers):
            for projection in targets:
                linear = lora_linear(layer, projection)
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

    def load_exported(self, state: dict[str, torch.Tensor], source: Path) -> None:
        """Start from factors export() wrote (another build's vision.safetensors). A projection the
        source did not adapt at all starts fresh (B = 0: no change to the model). A higher rank than
        the source's continues its factors: they fill the first rows of A and columns of B, the
        added columns of B are 0, so the adapted model starts as the source's exactly (the hooks
        apply B·A unscaled); a lower rank cannot hold them and is refused."""
        adapted = {name.split(".")[3] for name in state if name.startswith("lora.layers.")}
        for key in self.A:
            index, projection = key.split("_", 1)
            if projection not in adapted:
                continue
            a, b = state.get(lora_key(int(index), projection, "A")), state.get(lora_key(int(index), projection, "B"))
            rank = self.A[key].shape[0]
            if (a is None or b is None or a.shape[0] > rank or a.shape[1:] != self.A[key].shape[1:]
                    or b.shape != (self.B[key].shape[0], a.shape[0])):
                found = "none" if a is None or b is None else f"A {tuple(a.shape)}, B {tuple(b.shape)}"
                raise ValueError(f"{source} has no LoRA factors of rank {rank} or lower for layer {index} "
                                 f"{projection} (expected A (r, {self.A[key].shape[1]}), B "
                                 f"({self.B[key].shape[0]}, r) with r <= {rank}; found {found}): pass its "
                                 f"--lora-rank (or a higher one) or another --vision-init")
            with torch.no_grad():
                self.A[key][:a.shape[0]].copy_(a.float())
                self.B[key].zero_()
                self.B[key][:, :b.shape[1]].copy_(b.float())

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()



class BestEvaluation:
    """The best held-out evaluation so far and the trained weights that scored it (on a tie the
    later one, which has trained longer). Weights are kept on the CPU: tower, projector, LoRA."""

    def __init__(self, step: int, accuracy: float, weights: dict, lora: dict | None):
        self.step, self.accuracy, self.weights, self.lora = step, accuracy, weights, lora

    @classmethod
    def of(cls, step: int, accuracy: float, model, lora: LanguageLoRA | None) -> "BestEvaluation":
        return cls(step, accuracy, *trained_state(model, lora))

    def offer(self, step: int, accuracy: float, model, lora: LanguageLoRA | None) -> bool:
        """Keep this evaluation if it is at least as good as the best; says whether it was kept."""
        if accuracy < self.accuracy:
            return False
        self.step, self.accuracy = step, accuracy
        self.weights, self.lora = trained_state(model, lora)
        return True

    def restore(self, model, lora: LanguageLoRA | None) -> None:
        model.load_state_dict(self.weights, strict=False)
        if lora is not None and self.lora:
            lora.load_state_dict(self.lora)

    def record(self) -> dict:
        return {"step": self.step, "accuracy": self.accuracy}


def trained_state(model, lora: LanguageLoRA | None) -> tuple[dict, dict | None]:
    """Copies of what stage 2 trains: the TRAINABLE weights and the LoRA factors (None without LoRA)."""
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k.startswith(TRAINABLE)}
    factors = {k: v.detach().cpu().clone() for k, v in lora.state_dict().items()} if lora else None
    return weights, factors


def save_resume_state(path: Path, state: dict) -> None:
    """Write atomically; only tensors and plain Python values, so load_resume_state needs no pickle."""
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def load_resume_state(path: Path, device: str) -> dict:
    """The stage-2 resume state, loaded with weights_only=True: a state file is data, and a pickled
    object in it (which would run code when unpickled) is refused."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} should hold only tensors and plain Python values (a stage-2 resume state), "
                         f"but holds other pickled objects, which are not loaded: {str(err).splitlines()[0]} "
                         "Delete it to restart stage 2.") from None


def start_from(model, lora: LanguageLoRA | None, source: Path, log: StageLog) -> dict[str, bool]:
    """--vision-init: LoRA factors from another build's weights (the language side's skills: reading
    image embeddings, answering in one word or at length), and its tower + projector when its tower
    has the same image-token setting (continuing that build; a projector only fits the tower it was
    trained on, so with another setting both stay this build's own). A source with another kind of
    projector (mlp vs words) gives its tower only: its LoRA learned to read the other projector's
    image tokens. Returns what was loaded: {"lora", "tower", "projector"} -> bool."""
    from safetensors.torch import load_file

    from vispec_bench.models.testbed.model import image_tokens_of, projector_of

    path = source / "vision.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"--vision-init {source}: no vision.safetensors there")
    state = load_file(str(path))
    # a LoRA learned to read one projector's image tokens: with another projector it starts fresh
    same_projector = projector_of(state) == projector_in(model)
    if lora is not None and same_projector:
        lora.load_exported(state, path)
    own = model.config.vision_config
    same_tower = image_tokens_of(state, path) == (own.image_size // own.patch_size) ** 2
    if same_tower:
        kept = ("model.vision_tower.",) + (("model.multi_modal_projector.",) if same_projector else ())
        model.load_state_dict({k: v.float() for k, v in state.items() if k.startswith(kept)}, strict=False)
    loaded = {"lora": lora is not None and same_projector, "tower": same_tower, "projector": same_tower and same_projector}
    log(stage="vision", init=str(source), **loaded)
    return loaded


def lora_told_in_words(model, lora: LanguageLoRA, processor, config: BuildConfig, work: Path, device: str,
                       log: StageLog) -> None:
    """--lora-words-steps: the LoRA first learns the questions told in words (build/words.py), once:
    its factors are kept in WORK/words_lora-<N>steps.pt, so an interrupted stage 2 does not repeat it
    (named by N: a resumed stage 2 with another --lora-words-steps trains again)."""
    from vispec_bench.models.testbed.build.words import train_lora_told_in_words

    path = work / f"words_lora-{config.lora_words_steps}steps.pt"
    if path.exists():
        lora.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        log(stage="vision", words_lora="loaded", path=str(path))
        return
    started = time.time()
    loss = train_lora_told_in_words(model, lora, processor.tokenizer, config.lora_words_steps, config.seed,
                                    config.vision_lr, config.vision_batch, device)
    torch.save({k: v.detach().cpu() for k, v in lora.state_dict().items()}, path)
    log(stage="vision", words_lora_steps=config.lora_words_steps, loss=None if loss is None else round(loss, 4),
        seconds=round(time.time() - started, 1))


def cached_long_examples(model, processor, config: BuildConfig, work: Path, device: str, log: StageLog) -> list:
    """long_answer_examples, written once to WORK/long_examples.json (the base model writes them:
    they must be made before any LoRA hook is attached)."""
    if not config.vision_long_examples or not config.vision_steps:
        return []  # no training steps (--vision-steps 0: the --vision-init weights as they are): none needed
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
    return long_examples


def train_vision(model, processor, config: BuildConfig, work: Path, device: str,
                 log: StageLog) -> tuple[dict, dict[str, torch.Tensor]]:
    """Returns the best held-out evaluation ({"step", "accuracy"}) and the LoRA factors to ship
    (empty without LoRA); `model` is left holding that evaluation's weights."""
    from tqdm.auto import tqdm

    state_path = work / "vision_state.pt"
    trained = TRAINABLE if config.vision_train_tower else ("model.multi_modal_projector.",)
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(trained))
    long_examples = cached_long_examples(model, processor, config, work, device, log)
    lora = LanguageLoRA(model, config.lora_rank, tuple(config.lora_targets)) if config.lora_rank else None
    params = [p for p in model.parameters() if p.requires_grad] + (list(lora.parameters()) if lora else [])
    optimizer = torch.optim.AdamW(params, lr=config.vision_lr, weight_decay=0.0)
    train = ShortAnswerExamples(processor, "train")
    test = ShortAnswerExamples(processor, "test")
    eval_indices = sorted(random.Random(config.seed).sample(range(len(test)), config.eval_questions))
    start = 0
    if state_path.exists():
        state = load_resume_state(state_path, device)
        model.load_state_dict(state["weights"], strict=False)
        if lora is not None and state.get("lora"):
            lora.load_state_dict(state["lora"])
        try:
            optimizer.load_state_dict(state["optimizer"])
        except ValueError:  # the trained parameter set changed (LoRA added): a fresh optimizer
            log(stage="vision", note="optimizer state does not fit the parameters; starting a fresh optimizer")
        start = state["step"]
        if state.get("best_weights") is None:  # the best evaluation is the saved step's (or an older state file)
            best = BestEvaluation.of(state["eval"]["step"], state["eval"]["accuracy"], model, lora)
        else:
            best = BestEvaluation(state["eval"]["step"], state["eval"]["accuracy"], state["best_weights"],
                                  state["best_lora"])
        log(stage="vision", resumed_at=start)
    else:
        loaded = start_from(model, lora, Path(config.vision_init), log) if config.vision_init else {}
        if lora is not None and config.lora_words_steps and not loaded.get("lora"):
            lora_told_in_words(model, lora, processor, config, work, device, log)
        if projector_in(model) == "words" and not loaded.get("projector"):
            fit_word_readout(model, processor, config, device, log)
        best = BestEvaluation.of(0, first_token_accuracy(model, test, eval_indices, device), model, lora)
        log(stage="vision", step=0, eval_accuracy=best.accuracy)
    if config.vision_balance:
        order = balanced_order(train.suite.questions, train.suite.answers, config.seed + 1)
    else:
        order = list(range(len(train)))
        random.Random(config.seed + 1).shuffle(order)
    bar = tqdm(range(start, config.vision_steps), desc="testbed vision", initial=start, total=config.vision_steps)
    started = time.time()
    for step in bar:
        if best.accuracy >= config.vision_target:
            break
        lr = config.vision_lr * lr_factor(step, 20, config.vision_steps)  # warm-up, then cosine to 10 %
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
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", acc=f"{best.accuracy:.3f}")
        done = step + 1
        if done % config.eval_every == 0 or done == config.vision_steps:
            accuracy = first_token_accuracy(model, test, eval_indices, device)
            kept = best.offer(done, accuracy, model, lora)
            weights, factors = trained_state(model, lora)
            log(stage="vision", step=done, loss=round(float(loss.detach()), 4), eval_accuracy=round(accuracy, 4),
                elapsed_s=round(time.time() - started, 1))
            save_resume_state(state_path, {"weights": weights, "lora": factors, "optimizer": optimizer.state_dict(),
                                           "step": done, "eval": best.record(),
                                           # None: the best is this step (saves a second copy of the weights)
                                           "best_weights": None if kept else best.weights,
                                           "best_lora": None if kept else best.lora})
    best.restore(model, lora)
    return best.record(), (lora.export() if lora else {})


def save_vision_weights(model, lora_factors: dict, path: Path) -> None:
    """The form that ships: the TRAINABLE weights and the LoRA factors in bf16 safetensors, atomically."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach() for k, v in model.state_dict().items() if k.startswith(TRAINABLE)}
    state = {k: v.to(torch.bfloat16).contiguous().cpu() for k, v in {**state, **lora_factors}.items()}
    save_file(state, str(path.with_suffix(".tmp")), metadata={"format": "pt"})
    path.with_suffix(".tmp").replace(path)

