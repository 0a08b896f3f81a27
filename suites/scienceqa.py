"""ScienceQA-IMG (test questions with an image): lmms-eval task `scienceqa_img`."""

from vispec_bench.plugins.suite import LONG_ANSWER_INSTRUCTION

from .hub import DatasetSource, HubSuite

SHORT_POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."


class ScienceQA(HubSuite):
    name = "scienceqa"
    default_source = DatasetSource("lmms-lab-encoder/ScienceQA", "ScienceQA-IMG", "test")
    keep_columns = ("image",)

    def keep(self, doc) -> bool:
        return doc["image"] is not None

    @staticmethod
    def letters(doc) -> list[str]:
        return [chr(ord("A") + i) for i in range(len(doc["choices"]))]

    def doc_to_text(self, doc) -> str:
        choices = "\n".join(f"{letter}. {choice}" for letter, choice in zip(self.letters(doc), doc["choices"]))
        context = f"Context: {doc['hint']}\n" if doc["hint"] else ""
        post_prompt = SHORT_POST_PROMPT if self.prompt_mode == "short" else "\n" + LONG_ANSWER_INSTRUCTION
        return f"{context}{doc['question']}\n{choices}{post_prompt}"

    def doc_to_visual(self, doc) -> list:
        return [doc["image"].convert("RGB")]

    def doc_id(self, doc, index) -> str:
        return f"{self.source.split}-{index}"

    def references(self, doc) -> list[str]:
        return [self.letters(doc)[doc["answer"]]]

    def score_doc(self, doc, answer_text: str) -> float:
        # lmms-eval (after LLaVA): the whole answer is the letter, or it starts with "X." for a capital X.
        target = self.references(doc)[0].lower()
        prediction = answer_text.strip()
        if prediction.lower() == target:
            return 1.0
        if len(prediction) >= 2 and prediction[0].isupper() and prediction[1] == ".":
            return float(prediction[0].lower() == target)
        return 0.0
