"""Stage 2's examples: easy-VQA questions in the suite's short-answer prompt, and long-answer
targets distilled from the base SmolLM2."""

from __future__ import annotations

import random

import torch


def pixel_values(processor, paths: list[str]) -> torch.Tensor:
    """The processed images [N, 3, 64, 64] of the image files `paths`, in order."""
    from PIL import Image

    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return processor.image_processor(images, return_tensors="pt")["pixel_values"]


def question_group(question: str, answer: str) -> str:
    """open, or a yes/no question by what it asks about (shape / colour) and its answer."""
    from suites.easyvqa import yes_no_subject

    return f"{yes_no_subject(question)[0]} {answer}" if answer in ("yes", "no") else "open"


def balanced_order(questions: list[str], answers: list[str], seed: int) -> list[int]:
    """Every index once per pass, groups (question_group) taking turns, each group shuffled and
    cycled. Why: in easy-VQA "is there a <shape>?" is mostly answered "no" (two of three shapes are
    absent), and the first build learned that prior instead of looking (yes/no shape questions
    59-72 % right, open shape questions 100 %: reports/short_answer_errors.py on its 200-question
    run); with the groups balanced, the answer prior carries no information."""
    groups: dict[str, list[int]] = {}
    for index, (question, answer) in enumerate(zip(questions, answers)):
        groups.setdefault(question_group(question, answer), []).append(index)
    rng = random.Random(seed)
    members = [rng.sample(indices, len(indices)) for _, indices in sorted(groups.items())]
    return [members[i % len(members)][(i // len(members)) % len(members[i % len(members)])]
            for i in range(len(questions))]


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
            for image_id, pixels in zip(missing, pixel_values(self.processor, [self.paths[i] for i in missing])):
                self._pixels[image_id] = pixels
        pixels = torch.stack([self._pixels[i] for i in image_ids])
        return (input_ids.to(device), attention.to(device), labels.to(device), pixels.to(device),
                [len(s) for s in sequences])



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

