"""Short-answer accuracy on easy-VQA by question type, from a run's records.

    PYTHONPATH=. python reports/short_answer_errors.py RUN_DIR [--method ar]

Types: open (the answer is a shape or colour word) or yes/no, the latter split by what is asked
about (shape or colour) and whether the question is negated ("is there not ...", "is no ...
present", "does the image not contain ..."): a negated question's right answer is the opposite of
the plain one, so a model that reads the image but not the negation fails only those.
"""

from __future__ import annotations

import argparse
from collections import Counter

from suites.easyvqa import yes_no_subject
from vispec_bench.results.records import RunStore


def question_type(question: str, reference: str) -> str:
    if reference not in ("yes", "no"):
        return "open"
    about, negated = yes_no_subject(question)
    return f"yes/no {about}, {'negated' if negated else 'plain'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--method", default="ar")
    args = parser.parse_args()
    from suites.easyvqa import EasyVQA

    suite = EasyVQA(prompt_mode="short")
    total, right = Counter(), Counter()
    for record in RunStore(args.run_dir).records():
        if record["method"] != args.method or record.get("repeat", 0) != 0:
            continue
        question = suite.questions[int(record["sample_id"].rsplit("-", 1)[1])].lower()
        kind = question_type(question, record["references"][0])
        total[kind] += 1
        right[kind] += record["score"]
    print("| question type | n | accuracy |\n|---|---|---|")
    for kind in sorted(total):
        print(f"| {kind} | {total[kind]} | {right[kind] / total[kind]:.1%} |")
    print(f"| all | {sum(total.values())} | {sum(right.values()) / sum(total.values()):.1%} |")


if __name__ == "__main__":
    main()
