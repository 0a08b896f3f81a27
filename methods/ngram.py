"""Prompt lookup ("ngram") decoding: draft by copying what followed an earlier occurrence of the context's suffix.

No draft network, no training: the method of Saxena's prompt-lookup decoding, as Hugging Face's
`generate(prompt_lookup_num_tokens=K)` (`PromptLookupCandidateGenerator`) and vLLM / SGLang's
"ngram" speculative decoding run it. Each round, for n from `max_ngram` down to `min_ngram`, the
last n tokens of the context (prompt ids + emitted ids) are looked up among earlier positions;
the first n with a match decides, its earliest occurrence is taken, and the (up to) `num_draft`
tokens that followed it are the draft chain, cut before the first EOS token.

With the defaults (max_ngram=2, min_ngram=1, num_draft=10, num_branches=1) the proposals are
HF's for `max_matching_ngram_size=2, prompt_lookup_num_tokens=10`, with one deliberate
difference: image placeholder tokens never take part — neither inside a matched n-gram nor in a
continuation (a continuation stops before an image token, and an occurrence whose next token is
an image token is not a match). HF matches over them, so where HF would propose image tokens
(which the target never emits) we take the next occurrence instead; on text-only contexts the
two are the same (tests/test_ngram.py checks this against HF's class).

`num_branches=B > 1` goes beyond a chain: up to B distinct continuations from different
occurrences (longest n first, earliest occurrence first, as the chain; the chain is always the
first branch), merged into a prefix tree that the engine verifies in one forward.

Per round the work is a few dict look-ups: the proposer keeps an index n-gram -> ascending
start positions, filled once from the prompt in `start` and extended by the newly emitted
tokens in `propose`; nothing is searched or copied per round beyond the draft itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vispec_bench.engine.draft_tree import DraftTree, chain
from vispec_bench.engine.proposer import NO_DRAFT_CACHE, Proposer
from vispec_bench.errors import InputError
from vispec_bench.plugins.method import Method

SCANNED_PER_BRANCH = 8  # num_branches > 1: occurrences examined per wanted branch, at most (bounds a round's work)


@dataclass
class NgramOptions:
    max_ngram: int = 2  # longest suffix matched (HF: max_matching_ngram_size, default 2)
    min_ngram: int = 1  # shortest suffix matched (HF always goes down to 1)
    num_draft: int = 10  # draft tokens per continuation (HF: prompt_lookup_num_tokens; 10 = HF's num_output_tokens default)
    num_branches: int = 1  # distinct continuations proposed as a tree; 1 = HF's single chain


class NgramProposer(Proposer):
    """One sample's prompt lookup. `index` maps an n-gram (a tuple) to the ascending start
    positions of its occurrences whose next token is known and is not an image token; an
    n-gram containing an image token is never indexed."""

    def __init__(self, options: NgramOptions, eos_token_ids, image_token_id: int | None):
        self.options = options
        # The largest verify block (root included): the compiled engine compiles it before timing
        # and pads shorter chains up to it.
        self.max_verify_tokens = options.num_draft * options.num_branches + 1
        self.sizes = range(options.min_ngram, options.max_ngram + 1)
        self.stops = frozenset(eos_token_ids) | ({image_token_id} if image_token_id is not None else frozenset())
        self.image_token_id = image_token_id
        self.context: list[int] = []
        self.index: dict[tuple[int, ...], list[int]] = {}
        self.last_image = -1  # position of the latest image token in the context
        self.prompt_length = 0

    def start(self, adapter, prompt, prefill, first_token):
        self._extend(prompt.input_ids.tolist())
        self.prompt_length = len(self.context)

    def draft_cost(self) -> dict:
        return dict(NO_DRAFT_CACHE)  # a lookup in the token ids: no draft network, no draft cache

    def _extend(self, tokens) -> None:
        context, index, image, sizes = self.context, self.index, self.image_token_id, self.sizes
        for token in tokens:
            position = len(context)
            context.append(token)
            if token == image:
                self.last_image = position  # and the n-grams before it get no continuation that starts with it
                continue
            for n in sizes:  # the n-grams ending just before `token` now have a continuation
                begin = position - n
                if begin <= self.last_image:  # runs off the start or into an image: so does every larger n
                    break
                index.setdefault(tuple(context[begin:position]), []).append(begin)

    def _continuation(self, begin: int, depth: int) -> list[int]:
        follow = self.context[begin:begin + depth]
        for i, token in enumerate(follow):
            if token in self.stops:  # HF cuts before the first EOS; we also stop before an image token
                return follow[:i]
        return follow

    def _occurrences(self):
        """(n, positions) for each suffix length with a match, longest first."""
        context = self.context
        length = len(context)
        for n in reversed(self.sizes):
            if n < length:
                positions = self.index.get(tuple(context[length - n:]))
                if positions:
                    yield n, positions

    def propose(self, emitted, budget):
        seen = len(self.context) - self.prompt_length
        if seen < len(emitted):
            self._extend(emitted[seen:])
        depth = min(self.options.num_draft, budget - 1)  # a round emits at most `budget` tokens
        if depth < 1:
            return None
        if self.options.num_branches == 1:
            for n, positions in self._occurrences():
                # HF: the first (longest) n with a match decides, at its earliest occurrence; a
                # continuation that is empty after the EOS cut means no draft this round.
                follow = self._continuation(positions[0] + n, depth)
                return chain(torch.tensor(follow, dtype=torch.long)) if follow else None
            return None
        return self._tree(depth)

    def _tree(self, depth: int) -> DraftTree | None:
        tokens: list[int] = []
        parents: list[int] = []
        children: list[dict[int, int]] = [{}]  # node -> {token: child node}; node 0 is the root
        branches, scans = 0, SCANNED_PER_BRANCH * self.options.num_branches
        for n, positions in self._occurrences():
            for begin in positions[:scans]:
                scans -= 1
                node, added = 0, False
                for token in self._continuation(begin + n, depth):
                    child = children[node].get(token)
                    if child is None:
                        tokens.append(token)
                        parents.append(node)
                        children.append({})
                        child = children[node][token] = len(tokens)
                        added = True
                    node = child
                branches += added  # a continuation that is a prefix of one already taken adds nothing
                if branches == self.options.num_branches:
                    return DraftTree(torch.tensor(tokens, dtype=torch.long), parents)
            if scans <= 0:
                break
        return DraftTree(torch.tensor(tokens, dtype=torch.long), parents) if tokens else None


class Ngram(Method):
    name = "ngram"
    Options = NgramOptions

    def __init__(self, options=None):
        super().__init__(options)
        check_options(self.options)

    def make_proposer(self, adapter, context):
        return NgramProposer(self.options, adapter.eos_token_ids, adapter.image_token_id)


def check_options(options: NgramOptions) -> None:
    problems = []
    if options.min_ngram < 1:
        problems.append(f"min_ngram must be >= 1 (got {options.min_ngram})")
    if options.max_ngram < options.min_ngram:
        problems.append(f"max_ngram must be >= min_ngram (got max_ngram={options.max_ngram}, "
                        f"min_ngram={options.min_ngram})")
    if options.num_draft < 1:
        problems.append(f"num_draft must be >= 1 (got {options.num_draft})")
    if options.num_branches < 1:
        problems.append(f"num_branches must be >= 1 (got {options.num_branches})")
    if problems:
        raise InputError("ngram: " + "; ".join(problems))
