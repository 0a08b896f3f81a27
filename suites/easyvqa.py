"""easy-VQA (the `easy-vqa` package, MIT): 64x64 images of coloured shapes, 13 one-word answers.

Test split: 1,000 images, 9,673 questions. Short mode asks for one word and scores exact
match of the first word; long mode asks for an explanation and scores whether the gold word
appears in the answer (the word-level check the testbed quality target uses).
"""

from __future__ import annotations

import re

from vispec_bench.plugins.suite import LONG_ANSWER_INSTRUCTION, Sample, Suite

SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word."


class EasyVQA(Suite):
    name = "easyvqa"
    splits = ("test", "train")

    def __init__(self, prompt_mode="long", split: str | None = None, fixtures: bool = False):
        # `fixtures` changes nothing: easy-VQA's images and questions ship inside the package,
        # so the real suite is always offline.
        super().__init__(prompt_mode, split)  # checks the split against `splits`
        import easy_vqa  # imported here: the package installs a stray top-level `test`; use only easy_vqa

        if self.split == "test":
            self.questions, self.answers, self.image_ids = easy_vqa.get_test_questions()
            self.image_paths = easy_vqa.get_test_image_paths()
        else:
            self.questions, self.answers, self.image_ids = easy_vqa.get_train_questions()
            self.image_paths = easy_vqa.get_train_image_paths()

        self._labels = None

    def labels(self) -> dict[int, dict[str, str]]:
        if self._labels is None:
            self._labels = image_labels(self.split)
        return self._labels

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
                      {"image_id": int(image_id), "question": self.questions[index],
                       **self.labels().get(int(image_id), {})})

    def score(self, sample: Sample, answer_text: str) -> float:
        words = re.findall(r"[a-z]+", answer_text.lower())
        gold = sample.references[0].lower()
        if self.prompt_mode == "short":
            return float(bool(words) and words[0] == gold)
        return float(gold in words)

    def extra_scores(self, sample: Sample, answer_text: str) -> dict[str, float]:
        """Long mode: does the answer name the image's true shape or colour (the testbed's quality bar)?"""
        truth = {sample.meta.get("shape"), sample.meta.get("color")} - {None}
        if self.prompt_mode != "long" or not truth:
            return {}
        return {"names_shape_or_color": float(bool(truth & set(re.findall(r"[a-z]+", answer_text.lower()))))}


SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")


def yes_no_subject(question: str) -> tuple[str, bool]:
    """What a yes/no question asks about ("shape" when it names one, else "colour") and whether it is
    negated ("is there not a red shape?", "is no circle present?")."""
    words = re.findall(r"[a-z]+", question.lower())
    return ("shape" if any(word in SHAPES for word in words) else "colour"), ("not" in words or "no" in words)


def question_facts(question: str, answer: str) -> dict[str, str]:
    """What one question and its answer say about the image: {"shape": ..., "color": ...} (either may be absent).

    easy-VQA draws one shape of one colour per image, so "is there not a red shape?" -> "no" says
    the colour is red, and "what color is the circle?" -> "teal" says both.
    """
    words = re.findall(r"[a-z]+", question.lower())
    facts: dict[str, str] = {}
    if answer in ("yes", "no"):
        if (answer == "yes") != yes_no_subject(question)[1]:  # a plain yes or a negated no: the named attribute is present
            for word in words:
                if word in SHAPES:
                    facts["shape"] = word
                elif word in COLORS:
                    facts["color"] = word
        return facts
    for word in words:  # an open question names the other attribute, if any
        if word in SHAPES:
            facts["shape"] = word
        elif word in COLORS:
            facts["color"] = word
    facts["shape" if answer in SHAPES else "color"] = answer
    return facts


def image_labels(split: str = "train") -> dict[int, dict[str, str]]:
    """Per image id, the shape and colour its questions reveal (most images reveal both)."""
    import easy_vqa

    questions, answers, image_ids = (easy_vqa.get_train_questions() if split == "train"
                                     else easy_vqa.get_test_questions())
    labels: dict[int, dict[str, str]] = {}
    for question, answer, image_id in zip(questions, answers, image_ids):
        labels.setdefault(int(image_id), {}).update(question_facts(question, answer))
    return labels
