"""Stage 2's first part with --lora-words-steps: the LoRA learns easy-VQA's questions with the image
*told in words* ("The image shows a red circle. Is there not a circle? ..."), text only.

Why: SmolLM2-135M with stage 2's LoRA learns every question type this way (100 % held out,
reports/yes_no_in_words.py --lora-steps 300), while learning them from image tokens stalls near 87 %.
With the `words` projector (model.WordProjector) the image tokens are those words' embeddings, so
the LoRA starts stage 2's image steps already knowing how to compare them with the question."""

from __future__ import annotations

import torch

from suites.easyvqa import SHORT_ANSWER_INSTRUCTION


def told_in_words(facts: dict[str, str], question: str) -> str:
    return f"The image shows a {facts['color']} {facts['shape']}. {question}\n{SHORT_ANSWER_INSTRUCTION}"


def chat_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         return_dict=True)["input_ids"]


def padded(sequences: list[list[int]], answer_from: list[int] | None = None):
    """Right-padded ids, attention mask and labels (the tokens from answer_from[row] on; else none)."""
    width = max(map(len, sequences))
    input_ids = torch.zeros((len(sequences), width), dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for row, seq in enumerate(sequences):
        input_ids[row, :len(seq)] = torch.tensor(seq)
        attention[row, :len(seq)] = 1
        if answer_from is not None:
            labels[row, answer_from[row]:len(seq)] = torch.tensor(seq[answer_from[row]:])
    return input_ids, attention, labels


def train_lora_told_in_words(model, lora, tokenizer, steps: int, seed: int = 0, lr: float = 1e-3,
                             batch_size: int = 8, device: str = "cpu") -> float | None:
    """Train `lora` (its parameters only) `steps` steps on the train split's questions whose image's
    colour and shape are known, told in words; stage 2's optimiser, schedule (warm-up, then cosine)
    and balanced question groups, float32. Returns the last loss (None for 0 steps)."""
    from tqdm.auto import tqdm

    from suites.easyvqa import EasyVQA, image_labels
    from vispec_bench.drafts.training import lr_factor
    from vispec_bench.models.testbed.build.vision_examples import balanced_order

    train = EasyVQA(prompt_mode="short", split="train")
    labels = image_labels("train")
    usable = [i for i, image_id in enumerate(train.image_ids) if {"shape", "color"} <= set(labels.get(int(image_id), {}))]
    order = [usable[i] for i in balanced_order([train.questions[i] for i in usable],
                                               [train.answers[i] for i in usable], seed + 1)]
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    optimizer = torch.optim.AdamW(lora.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    loss = None
    for step in tqdm(range(steps), desc="LoRA, image told in words"):
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(step, 20, steps)
        chunk = [order[(step * batch_size + j) % len(order)] for j in range(batch_size)]
        prompts = [chat_ids(tokenizer, told_in_words(labels[int(train.image_ids[i])], train.questions[i]))
                   for i in chunk]
        answers = [tokenizer(train.answers[i], add_special_tokens=False)["input_ids"] + [end_id] for i in chunk]
        input_ids, attention, target = padded([p + a for p, a in zip(prompts, answers)], [len(p) for p in prompts])
        loss = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), labels=target.to(device)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(lora.parameters()), 1.0)
        optimizer.step()
    model.eval()
    return None if loss is None else float(loss.detach())
