"""The training contract of a draft method: what `train` (vispec_bench/drafts/training.py) calls.

Decoding needs only the inference side — Method.prepare / make_proposer and DraftMethod's draft
loading (vispec_bench/plugins/method.py). A method whose draft can be trained also implements
DraftTraining; `make_trainer` returns a DraftTrainer, the method's recipe for one draft.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

import torch


class DraftTrainer(Protocol):
    """One draft's training recipe. `features` is a vispec_bench.drafts.training.TeacherFeatures."""

    def loss(self, features) -> tuple[torch.Tensor | float, dict[str, float]]:
        """(loss to backpropagate, named parts to log); a float 0.0 when the row has nothing to learn."""

    def accuracy(self, features) -> dict[str, tuple[int, int]]:
        """Held-out top-1 agreement with the target per draft depth or head: name -> (correct, count)."""


class DraftTraining(ABC):
    """Mixed into a DraftMethod (which supplies build_draft, load_checkpoint, options, draft_kind)
    whose draft `train` can train."""

    @abstractmethod
    def make_trainer(self, draft: torch.nn.Module, lm_head: torch.nn.Module) -> DraftTrainer:
        """The recipe for `draft`, against the target's frozen float32 `lm_head`."""

    def prepare_teacher(self, adapter, draft) -> None:
        """Before any teacher features are computed: ask the adapter for what the trainer reads
        beyond the last hidden states (EAGLE-3: intermediate-layer features)."""

    def fit_to_data(self, draft, answer_rows, adapter) -> None:
        """Before training from scratch: fit the reduced draft vocabulary (option `vocab`, 0 = full)."""
        from vispec_bench.drafts.vocab import frequent_tokens, set_token_map

        size = self.options.vocab
        if size and size < adapter.vocab_size:
            set_token_map(draft, frequent_tokens(answer_rows, size, list(adapter.eos_token_ids)))

    def checkpoint_config(self, adapter) -> dict:
        """draft_config.json: the draft's kind (what a model shipping it offers it to), the options
        it was trained with and the target it fits."""
        from vispec_bench.drafts.checkpoints import target_signature

        return {"method": self.draft_kind, "options": vars(self.options).copy(), "target": target_signature(adapter)}
