"""The target adapter for VLMs that split an image into sub-images (Idefics3, SmolVLM).

Their processor resizes an image, cuts it into a grid of tiles and adds a downscaled global
view; each sub-image becomes its own run of image tokens, framed by tile tokens:

    <fake_token_around_image><row_1_col_1><image>*n<fake_token_around_image><row_1_col_2><image>*n ... \\n
    \\n<fake_token_around_image><global-img><image>*n<fake_token_around_image>

(an image too small to split, or with splitting off, is the global view alone). So one image
is several runs, where LLaVA-style prompts have one. `PreparedPrompt.image_spans` lists every
run, in prompt order: a method that compresses images (ViSpec's adaptor, SpecVLM's compressor)
compresses each sub-image on its own and keeps the tile tokens between them as text, and a
global feature taken per run (ViSpec) is, after an image, its global view's. Decoding is 1-D
rope over token indices, as in LLaVA, and the language model is the base model's `text_model`.
"""

from __future__ import annotations

import torch

from vispec_bench.engine.adapter import ImageTokenError, TargetAdapter, _contiguous_spans


class SplitImageAdapter(TargetAdapter):
    family = "idefics3"

    def __init__(self, model, processor, engine=None):
        super().__init__(model, processor, engine)
        # Idefics3's processor names it global_image_tag, SmolVLM's global_image_token.
        token = getattr(processor, "global_image_token", None) or getattr(processor, "global_image_tag", None)
        if token is None:
            raise ImageTokenError(f"{type(processor).__name__} names no global-view token (global_image_token / "
                                  f"global_image_tag), which {type(model).__name__}'s prompts mark each image with")
        self.global_image_token = token
        self.global_image_token_id = self.tokenizer.convert_tokens_to_ids(token)

    def _image_spans(self, image_mask: torch.Tensor, num_images: int) -> list[tuple[int, int]]:
        return _contiguous_spans(image_mask.cpu())  # every run; check_image_tokens groups them into images

    def check_image_tokens(self, input_ids: torch.Tensor, num_images: int) -> list[tuple[int, int]]:
        """Every run of image tokens; raises unless they form `num_images` images, each ending
        with its global view (the run right after a global-view token)."""
        runs = super().check_image_tokens(input_ids, num_images)
        counts = self.runs_per_image(input_ids, runs)  # one per global view; runs after the last are uncounted
        if len(counts) != num_images or sum(counts) != len(runs):
            raise ImageTokenError(
                f"expected {num_images} image(s), each its tiles' runs of image tokens followed by its global view "
                f"(a run right after {self.global_image_token!r}, id {self.global_image_token_id}); found "
                f"{len(counts)} global view(s) among {len(runs)} runs at {runs}")
        return runs

    def runs_per_image(self, input_ids: torch.Tensor, image_spans: list[tuple[int, int]]) -> list[int]:
        """How many of `image_spans` (as check_image_tokens returned them) each image has."""
        ids = input_ids.tolist()
        counts, current = [], 0
        for start, _ in image_spans:
            current += 1
            if start > 0 and ids[start - 1] == self.global_image_token_id:
                counts.append(current)
                current = 0
        return counts
