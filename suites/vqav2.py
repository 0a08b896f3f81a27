"""VQAv2 validation: lmms-eval task `vqav2_val`, scored with the ten-annotator VQA accuracy."""

from vispec_bench.plugins.suite import LONG_ANSWER_INSTRUCTION

from .hub import DatasetSource, HubSuite
from .vqa_normalize import vqa_accuracy

SHORT_POST_PROMPT = "\nAnswer the question using a single word or phrase."


class VQAv2(HubSuite):
    name = "vqav2"
    default_source = DatasetSource("lmms-lab-encoder/VQAv2", None, "validation")

    def doc_to_text(self, doc) -> str:
        post_prompt = SHORT_POST_PROMPT if self.prompt_mode == "short" else "\n" + LONG_ANSWER_INSTRUCTION
        return f"{doc['question']}{post_prompt}"

    def doc_to_visual(self, doc) -> list:
        return [doc["image"].convert("RGB")]

    def doc_id(self, doc, index) -> str:
        return str(doc["question_id"])

    def references(self, doc) -> list[str]:
        return [answer["answer"] for answer in doc["answers"] or []]

    def score_doc(self, doc, answer_text: str) -> float:
        return vqa_accuracy(answer_text, self.references(doc)) if doc["answers"] else 0.0
