"""Can SmolLM2-135M answer easy-VQA questions when it is *told* the image in words?

    PYTHONPATH=. python reports/yes_no_in_words.py [--per-type 100] [--lora-steps 300]

The vision stage plateaus below 90 % short-answer accuracy, and the misses are yes/no questions
about the shape (reports/short_answer_errors.py). This asks how much of that is the language model
itself: each test question is put to SmolLM2-135M-Instruct (its own weights, no LoRA) with the image
replaced by the sentence "The image shows a <colour> <shape>." (the labels easy-VQA's own questions
reveal), text only. The base model does not answer in one word ("The image does not contain a
circle."), so it is scored by forced choice: the allowed answer (yes/no, a shape or a colour) it
ranks highest at the answer's first position. The trained testbed is not asked: its LoRA learned to
read the image tokens and ignores such a sentence (it answers "black" to "The image shows a red
triangle. What is the color of the triangle?"), so its text-only answers fall back on priors.

With --lora-steps N the question becomes: can the vision stage's language-side training teach the
135M model these questions when the image arrives as words? A fresh LoRA with stage 2's settings
(rank 8 on q/v, AdamW lr 1e-3, batch 8, warm-up then cosine, question groups balanced) trains N
steps on the told-in-words *train* questions, then the same test questions are scored by the
model's greedy first token (the vision stage's held-out measure). If it learns them, the 135M
language model with rank-8 LoRA is not what caps the vision stage.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict

import torch

from suites.easyvqa import COLORS, SHAPES, EasyVQA
from vispec_bench.models.testbed.build.words import chat_ids, padded, told_in_words
from reports.short_answer_errors import question_type


def prompts_by_type(per_type: int) -> dict[str, list[tuple[str, str]]]:
    """Up to `per_type` test questions of each type whose image's shape and colour are both known,
    as (text-only prompt, answer), in the test split's order."""
    suite = EasyVQA(prompt_mode="short")
    labels = suite.labels()
    chosen: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for question, answer, image_id in zip(suite.questions, suite.answers, suite.image_ids):
        facts = labels.get(int(image_id), {})
        kind = question_type(question.lower(), answer)
        if "shape" in facts and "color" in facts and len(chosen[kind]) < per_type:
            chosen[kind].append((told_in_words(facts, question), answer))
    return dict(chosen)


def candidates(answer: str) -> tuple[str, ...]:
    """The answers the question allows: yes/no, the three shapes or the eight colours."""
    return ("yes", "no") if answer in ("yes", "no") else SHAPES if answer in SHAPES else COLORS


def answer_logits(model, tokenizer, items: list[tuple[str, str]], batch_size: int):
    """(chunk of items, the logits at each one's answer position), batch by batch."""
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        ids = [chat_ids(tokenizer, text) for text, _ in chunk]
        input_ids, attention, _ = padded(ids)
        logits = model(input_ids=input_ids, attention_mask=attention).logits
        yield chunk, logits[torch.arange(len(ids)), torch.tensor([len(seq) for seq in ids]) - 1]


@torch.inference_mode()
def forced_choice_accuracy(model, tokenizer, items: list[tuple[str, str]], batch_size: int = 16) -> float:
    """The allowed answer whose first token (lower case or capitalised, with or without a leading
    space) the model ranks highest at the answer's first position."""
    first_ids = {word: [tokenizer(v, add_special_tokens=False)["input_ids"][0]  # tokenised once per word
                        for v in (word, word.capitalize(), " " + word, " " + word.capitalize())]
                 for word in ("yes", "no", *SHAPES, *COLORS)}
    right = 0
    for chunk, last in answer_logits(model, tokenizer, items, batch_size):
        for row, (_, answer) in enumerate(chunk):
            options = candidates(answer)
            scores = [float(last[row, first_ids[word]].max()) for word in options]
            right += options[scores.index(max(scores))] == answer
    return right / len(items)


@torch.inference_mode()
def greedy_first_token_accuracy(model, tokenizer, items: list[tuple[str, str]], batch_size: int = 16) -> float:
    """Share of items whose answer's first token is the model's top token over the whole vocabulary."""
    right = 0
    for chunk, last in answer_logits(model, tokenizer, items, batch_size):
        top = last.argmax(-1)
        right += sum(int(top[row]) == tokenizer(answer, add_special_tokens=False)["input_ids"][0]
                     for row, (_, answer) in enumerate(chunk))
    return right / len(items)


def train_lora_told_in_words(model, tokenizer, steps: int, seed: int = 0):
    """Stage 2's LoRA (rank 8 on q/v) trained as the build's --lora-words-steps trains it; returns
    the LoRA (hooks attached)."""
    from vispec_bench.models.testbed.build import words
    from vispec_bench.models.testbed.build.vision import LanguageLoRA

    for param in model.parameters():
        param.requires_grad_(False)
    lora = LanguageLoRA(model, rank=8)
    words.train_lora_told_in_words(model, lora, tokenizer, steps, seed)
    return lora


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-type", type=int, default=100)
    parser.add_argument("--lora-steps", type=int, default=0,
                        help="train stage 2's LoRA this many steps on the told-in-words train questions first")
    args = parser.parse_args()
    from vispec_bench.models.testbed.model import build_untrained_testbed

    items = prompts_by_type(args.per_type)
    model, processor = build_untrained_testbed()[:2]  # SmolLM2's own weights: no LoRA, the image unused
    if args.lora_steps:
        torch.manual_seed(0)
        train_lora_told_in_words(model, processor.tokenizer, args.lora_steps)
        print(f"| question type (image told in words) | n | after {args.lora_steps} LoRA steps, greedy first token |")
        print("|---|---|---|")
        for kind in sorted(items):
            accuracy = greedy_first_token_accuracy(model, processor.tokenizer, items[kind])
            print(f"| {kind} | {len(items[kind])} | {accuracy:.1%} |")
        return
    print("| question type (image told in words) | n | chance | most common answer | "
          "SmolLM2-135M-Instruct, forced choice |")
    print("|---|---|---|---|---|")
    for kind in sorted(items):
        chance = sum(1 / len(candidates(answer)) for _, answer in items[kind]) / len(items[kind])
        answers = Counter(answer for _, answer in items[kind])
        common, count = answers.most_common(1)[0]
        print(f"| {kind} | {len(items[kind])} | {chance:.1%} | {common} {count / len(items[kind]):.0%} | "
              f"{forced_choice_accuracy(model.eval(), processor.tokenizer, items[kind]):.1%} |")


if __name__ == "__main__":
    main()
