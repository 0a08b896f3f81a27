"""What a testbed build costs per image-token setting, measured before building one (run it alone).

    python reports/build_cost.py [--settings 64,256,576]

Per setting, on the untrained testbed of that setting: one stage-2 (vision) training step (batch 8,
prompt = image tokens + 45 text tokens, labels on the last 8, bf16 autocast as the build runs it,
backward through the frozen language model into the projector), one float32 prefill of a single
prompt (the cost every generated answer, evaluation and benchmark sample pays before decoding),
one stage-1 (tower pretraining) step at batch 32 and 64, and (`--drafts`) one stage-4 training
step of the EAGLE-2 and ViSpec drafts (one row per step, as `train` runs it: an easy-VQA long-answer
prompt and a 150-token answer, the teacher features computed beforehand as the build's feature
directory holds them). Best of a few repeats.
"""

from __future__ import annotations

import argparse
import time

import torch


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def draft_steps(model, processor, image_tokens: int, answer_tokens: int = 150) -> dict:
    """Seconds of one draft training step (loss + backward + AdamW) per draft method."""
    from vispec_bench.drafts.training import frozen_float_lm_head, teacher_features
    from vispec_bench.engine.adapter import make_adapter
    from vispec_bench.plugins.method import make_method
    from vispec_bench.plugins.suite import make_suite

    adapter = make_adapter(model, processor)
    sample = make_suite("easyvqa", "long").select(1, 0)[0]
    answer = [int(i) for i in torch.randint(100, 4000, (answer_tokens,), generator=torch.Generator().manual_seed(1))]
    result = {}
    for name in ("eagle2", "vispec"):
        method = make_method(name, {"vocab": "4096"})
        draft = method.build_draft(adapter).float()
        method.prepare_teacher(adapter, draft)
        features = teacher_features(adapter, sample.messages, sample.images, answer)
        method.fit_to_data(draft, [answer], adapter)
        trainer = method.make_trainer(draft, frozen_float_lm_head(adapter))
        optimizer = torch.optim.AdamW([p for p in draft.parameters() if p.requires_grad], lr=1e-4)

        def step():
            loss, _ = trainer.loss(features)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        result["draft row tokens"] = features.input_ids.shape[0]
        result[f"{name} draft step s"] = best_of(3, step)
    return result


def measure(image_tokens: int, drafts: bool) -> dict:
    from vispec_bench.models.testbed.model import build_untrained_testbed, image_setting

    size, _ = image_setting(image_tokens)
    model, processor = build_untrained_testbed(image_tokens=image_tokens)
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("model.multi_modal_projector"))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 1000, (8, image_tokens + 45), generator=generator)
    ids[:, 10:10 + image_tokens] = model.config.image_token_id
    pixels = torch.randn(8, 3, size, size, generator=generator)
    labels = ids.clone()
    labels[:, :-8] = -100

    def vision_step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, labels=labels).loss
        loss.backward()

    @torch.no_grad()
    def prefill():
        model(input_ids=ids[:1], pixel_values=pixels[:1])

    model.train()
    result = {"vision step (b8) s": best_of(3, vision_step)}
    model.eval()
    result["prefill (b1) s"] = best_of(3, prefill)
    tower = model.model.vision_tower
    for param in tower.parameters():
        param.requires_grad_(True)
    for batch in (32, 64):
        images = torch.randn(batch, 3, size, size, generator=generator)

        def pretrain_step():
            features = tower(pixel_values=images, output_hidden_states=True).hidden_states[-2][:, 1:]
            features.float().pow(2).mean().backward()

        result[f"pretrain step (b{batch}) s"] = best_of(2, pretrain_step)
    if drafts:
        for param in model.parameters():
            param.requires_grad_(False)
        model.eval()
        result.update(draft_steps(model, processor, image_tokens))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="64,256,576")
    parser.add_argument("--drafts", action="store_true", help="also one draft training step (EAGLE-2, ViSpec)")
    args = parser.parse_args()
    rows = {int(tokens): measure(int(tokens), args.drafts) for tokens in args.settings.split(",")}
    columns = list(next(iter(rows.values())))
    print(f"torch threads {torch.get_num_threads()}")
    print("| image tokens | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for tokens, row in rows.items():
        print(f"| {tokens} | " + " | ".join(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
