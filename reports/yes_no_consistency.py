"""Are the testbed's yes/no mistakes failures to see or failures to compare?

    PYTHONPATH=. python reports/yes_no_consistency.py RUN_DIR [--image-tokens 64]

RUN_DIR is a short-answer run of the shipped testbed (e.g. reports/image-tokens-cpu/runs/testbed-short).
For every image its yes/no questions are about, the same model is asked the open questions "What shape
is in the image?" and "What color is the shape?" (forms easy-VQA itself asks), scored by the greedy
first token against the first token of the image's label. Each yes/no answer in the run is then
filed by whether the model's own open answer about that attribute is right ("sees it") and whether
the yes/no answer is right. Mistakes where the model sees the attribute are failures to compare
it with the one the question names.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from suites.easyvqa import COLORS, SHAPES, SHORT_ANSWER_INSTRUCTION, yes_no_subject
from vispec_bench.results.records import RunStore


@torch.inference_mode()
def open_answers(model, examples, pixels: dict, question: str, image_ids: list[int]) -> dict[int, int]:
    """Image id -> the model's greedy first answer token to `question` about that image."""
    prompt = examples.image_prompt_ids(f"{question}\n{SHORT_ANSWER_INSTRUCTION}")
    answers = {}
    for start in range(0, len(image_ids), 16):
        chunk = image_ids[start:start + 16]
        input_ids = torch.tensor([prompt] * len(chunk))
        logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                       pixel_values=torch.stack([pixels[i] for i in chunk])).logits[:, -1]
        answers.update(zip(chunk, logits.argmax(-1).tolist()))
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--image-tokens", type=int, default=64)
    parser.add_argument("--method", default="ar")
    args = parser.parse_args()
    from vispec_bench.models.testbed.build.vision_examples import ShortAnswerExamples, pixel_values
    from vispec_bench.models.testbed.model import build_testbed

    model, processor, _ = build_testbed(image_tokens=args.image_tokens)
    examples = ShortAnswerExamples(processor, "test")
    suite, tokenizer = examples.suite, processor.tokenizer
    labels = suite.labels()
    first_token = {word: tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in SHAPES + COLORS}
    records = [r for r in RunStore(args.run_dir).records() if r["method"] == args.method and r.get("repeat", 0) == 0]
    index = {id(r): int(r["sample_id"].rsplit("-", 1)[1]) for r in records}
    images = sorted({int(suite.image_ids[index[id(r)]]) for r in records})
    pixels = dict(zip(images, pixel_values(processor, [suite.image_paths[i] for i in images])))
    seen = {"shape": open_answers(model, examples, pixels, "What shape is in the image?", images),
            "color": open_answers(model, examples, pixels, "What color is the shape?", images)}
    for attribute, answers in seen.items():
        known = [i for i in images if attribute in labels.get(i, {})]
        right = sum(answers[i] == first_token[labels[i][attribute]] for i in known)
        print(f"open question about the {attribute}: {right / len(known):.1%} right ({len(known)} images)")
    table = Counter()
    for record in records:
        i = index[id(record)]
        if suite.answers[i] not in ("yes", "no"):
            continue
        about = yes_no_subject(suite.questions[i])[0]
        attribute = "shape" if about == "shape" else "color"
        image = int(suite.image_ids[i])
        truth = labels.get(image, {}).get(attribute)
        sees = "unknown" if truth is None else ("sees it" if seen[attribute][image] == first_token[truth] else "does not")
        table[(about, sees, "right" if record["score"] >= 1 else "wrong")] += 1
    print("\n| yes/no about | model's own open answer | yes/no right | yes/no wrong |\n|---|---|---|---|")
    for about in sorted({k[0] for k in table}):
        for sees in ("sees it", "does not", "unknown"):
            if table[(about, sees, "right")] + table[(about, sees, "wrong")]:
                print(f"| {about} | {sees} | {table[(about, sees, 'right')]} | {table[(about, sees, 'wrong')]} |")


if __name__ == "__main__":
    main()
