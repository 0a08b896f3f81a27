"""Which form of image lets stage 2's LoRA learn easy-VQA's yes/no comparisons? An oracle image.

    PYTHONPATH=. python reports/image_form.py --form learned|words [--steps 200]

The testbed's misses are yes/no questions whose attribute the model sees (reports/yes_no_consistency.py),
and the same LoRA learns every question type from the image told in words (reports/yes_no_in_words.py
--lora-steps). This replaces the tower and projector by an oracle that knows each image's colour and
shape, and puts into the image-token positions of the real short-answer prompts (64 per image):
- `learned`: one vector per (colour, shape) class in every image position, trained along with the
  LoRA (initialised to the sum of the two words' embeddings). This is the best our tower + projector
  could deliver: the tower's patch features carry the label but next to no position
  (reports/tower_position_probe.py), so every image token the projector makes is about the same vector.
- `words`: the colour word's embedding in the first half of the positions, the shape word's in the
  second (fixed): the image as repeated words.
A fresh LoRA with stage 2's settings (rank 8 on q/v, AdamW 1e-3, batch 8, warm-up then cosine,
balanced question groups) trains on the train questions; accuracy per question type is the greedy
first token on 300 test questions, every 50 steps.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter

import torch

from reports.short_answer_errors import question_type
from suites.easyvqa import COLORS, SHAPES, image_labels


class OracleImages:
    """Short-answer examples whose image tokens are replaced by the oracle's vectors."""

    def __init__(self, model, processor, split: str, form: str):
        from vispec_bench.models.testbed.build.vision_examples import ShortAnswerExamples

        self.examples = ShortAnswerExamples(processor, split)
        self.labels = image_labels(split)
        self.embed = model.get_input_embeddings()
        self.image_token = model.config.image_token_id
        self.form = form
        words = {w: processor.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in SHAPES + COLORS}
        self.word = {w: self.embed.weight[i].detach() for w, i in words.items()}

    def usable(self) -> list[int]:
        suite = self.examples.suite
        return [i for i in range(len(suite.questions))
                if {"shape", "color"} <= set(self.labels.get(int(suite.image_ids[i]), {}))]

    def facts(self, index: int) -> dict[str, str]:
        return self.labels[int(self.examples.suite.image_ids[index])]

    def batch(self, indices: list[int], with_answer: bool, classes: torch.Tensor | None):
        # stage 2's own batching (its prompts, padding and answer labels); the images it also
        # processes (once per image, cached) go unused
        ids, attention, labels, _, lengths = self.examples.batch(indices, with_answer, device="cpu")
        is_image = ids == self.image_token
        x = self.embed(torch.where(is_image, 0, ids))
        for row, index in enumerate(indices):
            facts, positions = self.facts(index), is_image[row].nonzero().squeeze(-1)
            if self.form == "learned":
                x[row, positions] = classes[COLORS.index(facts["color"]) * len(SHAPES) + SHAPES.index(facts["shape"])]
            else:
                half = len(positions) // 2
                x[row, positions[:half]] = self.word[facts["color"]]
                x[row, positions[half:]] = self.word[facts["shape"]]
        return x, attention, labels, lengths


@torch.no_grad()
def accuracy_by_type(model, images: OracleImages, indices: list[int], classes) -> dict[str, float]:
    model.eval()
    right, total = Counter(), Counter()
    suite = images.examples.suite
    for start in range(0, len(indices), 16):
        chunk = indices[start:start + 16]
        x, attention, _, lengths = images.batch(chunk, False, classes)
        top = model(inputs_embeds=x, attention_mask=attention).logits[torch.arange(len(chunk)),
                                                                         torch.tensor(lengths) - 1].argmax(-1)
        for row, index in enumerate(chunk):
            kind = question_type(suite.questions[index].lower(), suite.answers[index])
            total[kind] += 1
            right[kind] += int(top[row]) == images.examples.answer_ids(index)[0]
    return {**{k: right[k] / total[k] for k in sorted(total)}, "all": sum(right.values()) / sum(total.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--form", choices=("learned", "words"), required=True)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    from vispec_bench.drafts.training import lr_factor
    from vispec_bench.models.testbed.build.vision import LanguageLoRA
    from vispec_bench.models.testbed.build.vision_examples import balanced_order
    from vispec_bench.models.testbed.model import build_untrained_testbed

    torch.manual_seed(0)
    model, processor = build_untrained_testbed()[:2]  # SmolLM2's own weights; the tower is not used
    for param in model.parameters():
        param.requires_grad_(False)
    lora = LanguageLoRA(model, rank=8)
    train = OracleImages(model, processor, "train", args.form)
    test = OracleImages(model, processor, "test", args.form)
    classes = None
    if args.form == "learned":
        classes = torch.nn.Parameter(torch.stack([train.word[c] + train.word[s] for c in COLORS for s in SHAPES]))
    usable = train.usable()
    suite = train.examples.suite
    order = [usable[i] for i in balanced_order([suite.questions[i] for i in usable],
                                               [suite.answers[i] for i in usable], 1)]
    evaluated = sorted(random.Random(0).sample(test.usable(), 300))
    params = list(lora.parameters()) + ([classes] if classes is not None else [])
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    print(f"| step | {' | '.join(sorted({question_type(test.examples.suite.questions[i].lower(), test.examples.suite.answers[i]) for i in evaluated}))} | all |")
    started = time.time()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * lr_factor(step, 20, args.steps)
        chunk = [order[(step * 8 + j) % len(order)] for j in range(8)]
        model.train()
        x, attention, labels, _ = train.batch(chunk, True, classes)
        loss = model(inputs_embeds=x, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if (step + 1) % 50 == 0:
            scores = accuracy_by_type(model, test, evaluated, classes)
            print(f"| {step + 1} | {' | '.join(f'{v:.1%}' for v in scores.values())} | "
                  f"<!-- {time.time() - started:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
