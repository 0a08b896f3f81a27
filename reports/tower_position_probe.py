"""How much position do the testbed tower's patch features keep? A linear probe for patch-index parity.

    PYTHONPATH=. python reports/tower_position_probe.py [--image-tokens 64]

The projector turns each patch feature into one image token on its own, so it can lay its tokens out
by position (one attribute here, another there, as words in a sentence) only as far as the feature it
reads carries the patch's position. For the shipped tower, on 1,000 train images (800 to fit, 200 to
score), a linear probe predicts whether the patch index is even, from each layer's patch features:
the embeddings (patch + position) and every encoder layer up to the one the projector reads.
"""

from __future__ import annotations

import argparse

import torch


def parity_probe_accuracy(features: torch.Tensor, fit: int) -> float:
    """features [images, patches, hidden]: held-out accuracy of a linear probe for patch-index parity."""
    images, patches, hidden = features.shape
    x = features.reshape(-1, hidden)
    y = torch.arange(patches).repeat(images) % 2
    x = (x - x[:fit * patches].mean(0)) / (x[:fit * patches].std(0) + 1e-6)
    probe = torch.nn.Linear(hidden, 2)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(probe(x[:fit * patches]), y[:fit * patches])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float((probe(x[fit * patches:]).argmax(-1) == y[fit * patches:]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-tokens", type=int, default=64)
    args = parser.parse_args()
    import easy_vqa

    from vispec_bench.models.testbed.build.vision_examples import pixel_values
    from vispec_bench.models.testbed.model import build_testbed

    model, processor, _ = build_testbed(image_tokens=args.image_tokens)
    paths = easy_vqa.get_train_image_paths()
    with torch.no_grad():
        states = model.model.vision_tower(pixel_values=pixel_values(processor, [paths[i] for i in range(1000)]),
                                          output_hidden_states=True).hidden_states
    read = model.config.vision_feature_layer % len(states)  # the layer the projector reads
    print("| tower layer | patch-index parity, linear probe (held out) |\n|---|---|")
    for layer in range(read + 1):
        name = "embeddings" if layer == 0 else f"encoder layer {layer}" + (" (projector input)" if layer == read else "")
        print(f"| {name} | {parity_probe_accuracy(states[layer][:, 1:], fit=800):.1%} |")


if __name__ == "__main__":
    main()
