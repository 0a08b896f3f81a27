"""easy-VQA (the `easy-vqa` package, MIT): 64x64 images of coloured shapes, 13 one-word answers.

Test split: 1,000 images, 9,673 questions. Short mode asks for one word and scores exact
match of the first word; long mode asks for an explanation and scores whether the gold word
appears in the answer (the word-level check the testbed quality target uses).
"""

from __future__ import annotations

import re

from vispec_bench.suite import LONG_ANSWER_INSTRUCTION, Sample, Suite

SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word."


class EasyVQA(Suite):
    name = "easyvqa"

    def __init__(self, prompt_mode="long", split: str | None = "test", fixtures: bool = False):
        # `fixtures` changes nothing: easy-VQA's images and questions ship inside the package,
        # so the real suite is always offline.
        super().__init__(prompt_mode)
        split = split or "test"
        import easy_vqa  # imported here: the package installs a stray top-level `test`; use only easy_vqa

        if split not in ("train", "test"):
            raise ValueError(f"easy-VQA split must be train or test, got {split!r}")
        self.split = split
        if split == "test":
            self.questions, self.answers, self.image_ids = easy_vqa.get_test_questions()
            self.image_paths = easy_vqa.get_test_image_paths()
        else:
            self.questions, self.answers, self.image_ids = easy_vqa.get_train_questions()
            self.image_paths = easy_vqa.get_train_image_paths()

    def num_candidates(self) -> int:
        return len(self.questions)

    def prompt_text(self, question: str) -> str:
        instruction = SHORT_ANSWER_INSTRUCTION if self.prompt_mode == "short" else LONG_ANSWER_INSTRUCTION
        return f"{question}\n{instruction}"

    def sample(self, index: int) -> Sample:
        from PIL import Image

        image_id = self.image_ids[index]
        with Image.open(self.image_paths[image_id]) as image:
            image = image.convert("RGB")
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": self.prompt_text(self.questions[index])}]}]
        return Sample(f"{self.split}-{index}", messages, [image], [self.answers[index]],
                      {"image_id": int(image_id), "question": self.questions[index]})

    def score(self, sample: Sample, answer_text: str) -> float:
        words = re.findall(r"[a-z]+", answer_text.lower())
        gold = sample.references[0].lower()
        if self.prompt_mode == "short":
            return float(bool(words) and words[0] == gold)
        return float(gold in words)
