"""MMMU (validation, 30 subjects): lmms-eval task `mmmu_val`, default (non-interleaved) format.

The prompt is the question, then lettered options for multiple-choice questions, then the
task's instruction; `<image i>` placeholders stay in the text as lmms-eval leaves them (its
`mmmu_doc_to_messages` flips a module-global flag that rewrites them in every later prompt; we
never do). The images are those the question and options reference, in name order, up to 7.

Scoring follows the MMMU reference as lmms-eval runs it: a multiple-choice answer is parsed to a
letter ("(B)", "B ", "B.", or an option's text in a long answer; the last mention wins); an open
answer is split into key phrases and numbers, which match the normalised gold answer. Where the
reference draws a random letter because nothing could be parsed, we draw it from an RNG seeded
by the question id, so a score never changes between runs.
"""

from __future__ import annotations

import ast
import random
import re

from vispec_bench.plugins.suite import LONG_ANSWER_INSTRUCTION

from .hub import DatasetSource, HubSuite

MULTIPLE_CHOICE_PROMPT = "Answer with the option's letter from the given choices directly."
OPEN_ENDED_PROMPT = "Answer the question using a single word or phrase."
IMAGE_REFERENCE = re.compile(r"<image \d+>")


def options_of(doc) -> list[str]:
    return ast.literal_eval(doc["options"])  # stored as the repr of a list in the dataset


def letters_for(options: list[str]) -> list[str]:
    return [chr(ord("A") + i) for i in range(len(options))]


class MMMU(HubSuite):
    name = "mmmu"
    default_source = DatasetSource("lmms-lab-encoder/MMMU", None, "validation")

    def _prompt(self, doc, multiple_choice_prompt: str, open_prompt: str) -> str:
        if doc["question_type"] == "multiple-choice":
            options = options_of(doc)
            listed = "\n".join(f"{letter}. {option}" for letter, option in zip(letters_for(options), options))
            return f"{doc['question']}\n{listed}\n\n{multiple_choice_prompt}"
        return f"{doc['question']}\n\n{open_prompt}"

    def doc_to_text(self, doc) -> str:
        if self.prompt_mode == "long":
            return self._prompt(doc, LONG_ANSWER_INSTRUCTION, LONG_ANSWER_INSTRUCTION)
        return self._prompt(doc, MULTIPLE_CHOICE_PROMPT, OPEN_ENDED_PROMPT)

    def doc_to_visual(self, doc) -> list:
        names = sorted({ref.strip("<>").replace(" ", "_") for ref in IMAGE_REFERENCE.findall(self._prompt(doc, "", ""))})
        return [doc[name].convert("RGB") for name in names]

    def doc_id(self, doc, index) -> str:
        return doc["id"]

    def references(self, doc) -> list[str]:
        answer = doc["answer"]
        return list(answer) if isinstance(answer, list) else [answer]

    def score_doc(self, doc, answer_text: str) -> float:
        if doc["question_type"] == "multiple-choice":
            options = options_of(doc)
            letter = parse_multiple_choice(answer_text, letters_for(options), dict(zip(letters_for(options), options)),
                                           random.Random(doc["id"]))
            gold = doc["answer"]
            return float(letter in gold if isinstance(gold, list) else letter == gold)
        return float(open_answer_matches(doc["answer"], parse_open_answer(answer_text)))


def parse_multiple_choice(response: str, letters: list[str], option_text: dict[str, str], rng: random.Random) -> str:
    for char in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(char)
    response = f" {response} "
    by_letter, bracketed = True, False
    candidates = [letter for letter in letters if f"({letter})" in response]
    if candidates:
        bracketed = True
    else:
        candidates = [letter for letter in letters if f"{letter} " in response]
    if not candidates:
        candidates = [letter for letter in letters if f"{letter}." in response]
    if not candidates and len(response.split()) > 5:  # a long answer may name the option's text
        candidates = [letter for letter, text in option_text.items() if text.lower() in response.lower()]
        by_letter = False
    if not candidates:
        return rng.choice(letters)
    if len(candidates) == 1:
        return candidates[0]

    def last_mention(letter: str) -> int:
        if not by_letter:
            return response.lower().rfind(option_text[letter].lower())
        return response.rfind(f"({letter})") if bracketed else response.rfind(f" {letter} ")

    positions = [last_mention(letter) for letter in candidates]
    return candidates[positions.index(max(positions))]


NUMBER_PATTERNS = (
    re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b"),  # 1,234,567
    re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+"),  # scientific notation
    re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])"),  # plain
)
KEY_INDICATORS = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_open(text: str) -> list:
    """A number becomes a float rounded to 2 places; a string is lower-cased, and a single
    character is padded with a space on either side so it does not match inside words."""
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def parse_open_answer(response: str) -> list:
    response = response.strip().strip(".").lower()
    pieces = re.split(r"\.\s(?=[A-Z])|\n", response)
    key_phrases = []
    for index, piece in enumerate(pieces):
        indicators = KEY_INDICATORS + (["="] if index == len(pieces) - 1 else [])
        shortest = None  # the shortest tail after an indicator; an empty tail is replaced by the next one
        for indicator in indicators:
            if indicator in piece:
                tail = piece.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in (":", ",", ".", "!", "?", ";", "'"):
            key_phrases.append(shortest)
    if not key_phrases:
        key_phrases = [response]
    candidates = list(key_phrases)
    for phrase in key_phrases:
        for pattern in NUMBER_PATTERNS:
            candidates += pattern.findall(phrase)
    return list({value for candidate in candidates for value in normalize_open(candidate)})


def open_answer_matches(gold, predictions: list) -> bool:
    golds = [value for answer in (gold if isinstance(gold, list) else [gold]) for value in normalize_open(answer)]
    for prediction in predictions:
        if isinstance(prediction, str):
            if any(isinstance(g, str) and g in prediction for g in golds):
                return True
        elif prediction in golds:
            return True
    return False
