"""SEED-Bench (image questions): lmms-eval task `seedbench`, four options A-D."""

from vispec_bench.plugins.suite import LONG_ANSWER_INSTRUCTION

from .hub import DatasetSource, HubSuite

SHORT_POST_PROMPT = "Answer with the option's letter from the given choices directly."


class SEEDBench(HubSuite):
    name = "seedbench"
    default_source = DatasetSource("lmms-lab-encoder/SEED-Bench", None, "test")
    keep_columns = ("data_type",)

    def keep(self, doc) -> bool:
        return doc["data_type"] == "image"  # the video questions need a video model

    def doc_to_text(self, doc) -> str:
        question = (f"{doc['question']}\nA. {doc['choice_a']}\nB. {doc['choice_b']}\nC. {doc['choice_c']}\n"
                    f"D. {doc['choice_d']}")
        return f"{question}\n{SHORT_POST_PROMPT if self.prompt_mode == 'short' else LONG_ANSWER_INSTRUCTION}"

    def doc_to_visual(self, doc) -> list:
        return [image.convert("RGB") for image in doc["image"]]

    def doc_id(self, doc, index) -> str:
        return str(doc["question_id"])

    def references(self, doc) -> list[str]:
        return [doc["answer"]]

    def score_doc(self, doc, answer_text: str) -> float:
        # lmms-eval: the first character of the stripped answer against the letter, case-insensitively.
        prediction = answer_text.strip()
        if len(prediction) > 1:
            prediction = prediction[0]
        return float(prediction.lower().strip() == doc["answer"].lower().strip())
