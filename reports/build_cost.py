"""What a testbed build costs per image-token setting, measured before building one (run it alone).

    python reports/build_cost.py [--settings 64,256,576]

Per setting, on the untrained testbed of that setting: one stage-2 (vision) training step (batch 8,
prompt = image tokens + 45 text tokens, labels on the last 8, bf16 autocast as the build runs it,
backward through the frozen language model into the projector), one float32 prefill of a single
prompt (the cost every generated answer, evaluation and benchmark sample pays before decoding),
and one stage-1 (tower pretraining) step at batch 32 and 64. Best of a few repeats.
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


def measure(image_tokens: int) -> dict:
    from vispec_bench.models.testbed.model import build_untrained_testbed, image_setting

    size, _ = image_setting(image_tokens)
    model, _ = build_untrained_testbed(image_tokens=image_tokens)
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
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="64,256,576")
    args = parser.parse_args()
    rows = {int(tokens): measure(int(tokens)) for tokens in args.settings.split(",")}
    columns = list(next(iter(rows.values())))
    print(f"torch threads {torch.get_num_threads()}")
    print("| image tokens | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for tokens, row in rows.items():
        print(f"| {tokens} | " + " | ".join(f"{row[c]:.2f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
