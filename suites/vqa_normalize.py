"""VQA answer normalisation, as the VQA evaluation (and lmms-eval's vqav2 task) applies it.

Two steps, in this order:
1. punctuation: each mark in PUNCTUATION is deleted when it touches a space or when the text has
   a digit,digit comma; otherwise it becomes a space. Then periods not next to a digit go,
   at most 32 of them: the reference passes re.UNICODE (= 32) where `count` is expected, and
   we keep that behaviour for identical scores.
2. digits and articles: lower-case, split on whitespace, number words "none".."ten" become
   digits, articles go, and contractions written without one apostrophe get it back.

The contraction table is built, not typed: every canonical contraction below, with exactly
one of its apostrophes missing, maps back to it — plus the reference table's three quirks.
"""

from __future__ import annotations

import re
import statistics

PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
               "!"]
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d)(\,)+(?=\d)")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}

CANONICAL_CONTRACTIONS = """
'ow's'at 'twas I'd've I'm I've ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't
hadn't've hasn't haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am might've mightn't
mightn't've must've mustn't needn't not've o'clock oughtn't shan't she'd've should've shouldn't shouldn't've
somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's something'd something'd've
something'll that's there'd there'd've there're there's they'd they'd've they'll they're they've wasn't we'd've
we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll who's who've
why'll why're why's won't would've wouldn't wouldn't've y'all y'all'd've y'all'll you'd you'd've you'll you're
you've
""".split()
# The reference table's irregular entries: two words map to themselves, one loses its apostrophe.
QUIRKS = {"let's": "let's", "she's": "she's", "somebody'd": "somebodyd"}


def _build_contractions() -> dict[str, str]:
    table = {}
    for word in CANONICAL_CONTRACTIONS:
        for i, char in enumerate(word):
            if char == "'":
                table[word[:i] + word[i + 1:]] = word
    table.update(QUIRKS)
    return table


CONTRACTIONS = _build_contractions()


def strip_punctuation(text: str) -> str:
    out = text
    delete = DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        if delete or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, 32)


def normalize_digits_articles(text: str) -> str:
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_answer(text: str) -> str:
    return normalize_digits_articles(strip_punctuation(text))


def vqa_accuracy(prediction: str, gold_answers: list[str]) -> float:
    """VQA accuracy: for each of the (usually ten) annotators, min(1, matches among the others / 3),
    averaged. Answers and prediction are stripped of newlines/tabs, then normalised."""
    def clean(text: str) -> str:
        return normalize_answer(text.replace("\n", " ").replace("\t", " ").strip())

    prediction = clean(prediction)
    golds = [clean(answer) for answer in gold_answers]
    if not golds:
        return 0.0
    scores = []
    for i in range(len(golds)):
        others = golds[:i] + golds[i + 1:]
        scores.append(min(1.0, sum(other == prediction for other in others) / 3))
    return statistics.mean(scores)  # exact-fraction mean, as the reference: bit-identical scores
