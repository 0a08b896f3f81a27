"""Can SmolLM2-135M answer easy-VQA questions when it is *told* the image in words?

    PYTHONPATH=. python reports/yes_no_in_words.py [--per-type 100]

The vision stage plateaus below 90 % short-answer accuracy, and the misses are yes/no questions
about the shape (reports/short_answer_errors.py). This asks how much of that is the language model
itself: each test question is put to SmolLM2-135M-Instruct (its own weights, no LoRA) with the image
replaced by the sentence "The image shows a <colour> <shape>." (the labels easy-VQA's own questions
reveal), text only. The base model does not answer in one word ("The image does not contain a
circle."), so it is scored by forced choice: the allowed answer (yes/no, a shape or a colour) it
ranks highest at the answer's first position. The trained testbed is not asked: its LoRA learned to
read the image tokens and ignores such a sentence (it answers "black" to "The image shows a red
triangle. What is the color of the triangle?"), so its text-only answers fall back on priors.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict

import torch

from suites.easyvqa import COLORS, SHAPES, SHORT_ANSWER_INSTRUCTION, EasyVQA
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
            text = f"The image shows a {facts['color']} {facts['shape']}. {question}\n{SHORT_ANSWER_INSTRUCTION}"
            chosen[kind].append((text, answer))
    return dict(chosen)


def candidates(answer: str) -> tuple[str, ...]:
    """The answers the question allows: yes/no, the three shapes or the eight colours."""
    return ("yes", "no") if answer in ("yes", "no") else SHAPES if answer in SHAPES else COLORS


@torch.inference_mode()
def forced_choice_accuracy(model, tokenizer, items: list[tuple[str, str]], batch_size: int = 16) -> float:
    """The allowed answer whose first token (lower case or capitalised, with or without a leading
    space) the model ranks highest at the answer's first position."""
    first_ids = {word: [tokenizer(v, add_special_tokens=False)["input_ids"][0]  # tokenised once per word
                        for v in (word, word.capitalize(), " " + word, " " + word.capitalize())]
                 for word in ("yes", "no", *SHAPES, *COLORS)}
    right = 0
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        ids = [tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             return_dict=True)["input_ids"] for text, _ in chunk]
        width = max(map(len, ids))
        input_ids = torch.zeros((len(ids), width), dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for row, seq in enumerate(ids):
            input_ids[row, :len(seq)] = torch.tensor(seq)
            attention[row, :len(seq)] = 1
        logits = model(input_ids=input_ids, attention_mask=attention).logits
        last = logits[torch.arange(len(ids)), torch.tensor([len(seq) for seq in ids]) - 1]
        for row, (_, answer) in enumerate(chunk):
            options = candidates(answer)
            scores = [float(last[row, first_ids[word]].max()) for word in options]
            right += options[scores.index(max(scores))] == answer
    return right / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-type", type=int, default=100)
    args = parser.parse_args()
    from vispec_bench.models.testbed.model import build_untrained_testbed

    items = prompts_by_type(args.per_type)
    model, processor = build_untrained_testbed()[:2]  # SmolLM2's own weights: no LoRA, the image unused
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
