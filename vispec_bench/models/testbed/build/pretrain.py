"""Stage 1 of the testbed build: the CLIP-style tower alone learns each image's shape and colour."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vispec_bench.models.testbed.build.common import StageLog
from vispec_bench.models.testbed.build.vision_examples import pixel_values
from vispec_bench.running.config import BuildConfig


def patch_features(tower, pixels: torch.Tensor) -> torch.Tensor:
    """[B, patches, H]: the layer LLaVA's projector reads, patch tokens only."""
    return tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]


def pretrain_tower(model, processor, config: BuildConfig, work: Path, device: str, log: StageLog) -> dict:
    """Train the tower with two linear probes on every patch feature; returns the probes' held-out
    accuracies (share of patches that name the image's shape / colour)."""
    import easy_vqa
    from tqdm.auto import tqdm

    from suites.easyvqa import COLORS, SHAPES, image_labels

    tower = model.model.vision_tower
    paths = easy_vqa.get_train_image_paths()
    pixels = pixel_values(processor, [paths[i] for i in range(len(paths))]).to(device)
    labels = image_labels("train")
    shape = torch.tensor([SHAPES.index(labels.get(i, {}).get("shape")) if "shape" in labels.get(i, {}) else -100
                          for i in range(len(paths))], device=device)
    color = torch.tensor([COLORS.index(labels[i]["color"]) if "color" in labels.get(i, {}) else -100
                          for i in range(len(paths))], device=device)
    hidden = tower.config.hidden_size
    probes = nn.ModuleDict({"shape": nn.Linear(hidden, len(SHAPES)), "color": nn.Linear(hidden, len(COLORS))}).to(device)
    params = list(tower.parameters()) + list(probes.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(config.seed)
    held_out = torch.arange(len(paths))[-200:]  # the last 200 train images check the probes
    train_ids = torch.arange(len(paths))[:-200]

    def probe_loss(states, name, target):
        logits = probes[name](states)  # every patch predicts the image's label
        labels = target[:, None].expand(-1, states.shape[1])
        return nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)

    tower.train()
    loss = None  # stays None when pretrain_steps is 0: the probes are then only evaluated
    for step in tqdm(range(config.pretrain_steps), desc="testbed pretrain tower"):
        batch = train_ids[torch.randint(len(train_ids), (config.pretrain_batch,), generator=generator)]
        states = patch_features(tower, pixels[batch])
        loss = probe_loss(states, "shape", shape[batch]) + probe_loss(states, "color", color[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    tower.eval()
    with torch.no_grad():
        states = patch_features(tower, pixels[held_out])
        result = {}
        for name, target in (("shape", shape), ("color", color)):
            known = target[held_out] != -100
            guess = probes[name](states).argmax(-1)  # [B, patches]
            hits = (guess == target[held_out][:, None]).float().mean(dim=1)  # share of patches that know it
            result[f"probe_{name}_accuracy_per_patch"] = round(float(hits[known].mean()), 4)
    log(stage="pretrain", steps=config.pretrain_steps, loss=None if loss is None else round(float(loss.detach()), 4),
        **result)
    return result



def fit_word_readout(model, processor, config: BuildConfig, device: str, log: StageLog, steps: int = 400) -> dict:
    """Start of stage 2 with the `words` projector (WordProjector): its colour and shape read-outs
    fitted as linear probes on the frozen tower's patch features (every patch predicts its image's
    label), so the first image tokens already name the image. Returns the held-out accuracies per
    patch and per image (the patches' mean probabilities)."""
    import easy_vqa

    from suites.easyvqa import COLORS, SHAPES, image_labels

    tower, projector = model.model.vision_tower, model.model.multi_modal_projector
    paths = easy_vqa.get_train_image_paths()
    labels = image_labels("train")
    known = [i for i in range(len(paths)) if {"shape", "color"} <= set(labels.get(i, {}))]
    targets = {"shape": torch.tensor([SHAPES.index(labels[i]["shape"]) for i in known], device=device),
               "color": torch.tensor([COLORS.index(labels[i]["color"]) for i in known], device=device)}
    tower.eval()
    with torch.no_grad():  # the tower is frozen: its features once, in bf16 (576 tokens: ~1 GB)
        features = torch.cat([patch_features(tower, pixel_values(processor, [paths[i] for i in known[s:s + 256]]).to(device))
                              .to(torch.bfloat16) for s in range(0, len(known), 256)])
    held_out = torch.arange(len(known))[-200:]  # as stage 1: the last 200 labelled train images check it
    train_ids = torch.arange(len(known))[:-200]
    readouts = {"shape": projector.shape, "color": projector.color}
    params = [p for readout in readouts.values() for p in readout.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    generator = torch.Generator().manual_seed(config.seed)
    for _ in range(steps):
        batch = train_ids[torch.randint(len(train_ids), (128,), generator=generator)]
        states = features[batch].float()
        loss = sum(nn.functional.cross_entropy(readout(states).flatten(0, 1),
                                               targets[name][batch].repeat_interleave(states.shape[1]))
                   for name, readout in readouts.items())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    result = {}
    with torch.no_grad():
        states = features[held_out].float()
        for name, readout in readouts.items():
            probabilities = readout(states).softmax(-1)
            target = targets[name][held_out]
            result[f"readout_{name}_accuracy_per_patch"] = round(float((probabilities.argmax(-1) == target[:, None]).float().mean()), 4)
            result[f"readout_{name}_accuracy_per_image"] = round(float((probabilities.mean(1).argmax(-1) == target).float().mean()), 4)
    log(stage="vision", readout_steps=steps, **result)
    return result
