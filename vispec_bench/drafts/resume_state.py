"""Training resume state that loads with `torch.load(weights_only=True)`.

A resume file is read back from a checkpoint directory that may be shared; unpickling arbitrary
objects from it would run whatever code the file names. So the state holds tensors and plain
Python data only (numbers, strings, None, lists, tuples, dicts), and loading refuses anything
else. The random-number state travels in the same form: the CPU generator, the CUDA generator
of the training device when it is one (draft training draws its feature noise there), and
Python's `random` state as a tensor of its Mersenne Twister words.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import torch


class ResumeStateError(ValueError):
    pass


def rng_state(device: torch.device | str) -> dict:
    """Every generator a training step may draw from, as tensors and plain data."""
    version, words, gauss_next = random.getstate()
    state = {"torch_cpu": torch.get_rng_state(),
             "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64),
                        "gauss_next": gauss_next}}
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict, device: torch.device | str) -> None:
    """Put back what `rng_state` saved; resuming on a CUDA device needs that device's state."""
    torch.set_rng_state(state["torch_cpu"])
    python = state["python"]
    random.setstate((python["version"], tuple(python["words"].tolist()), python["gauss_next"]))
    if torch.device(device).type == "cuda":
        if "cuda" not in state:
            raise ResumeStateError(f"cannot resume on {device}: the state was saved without a CUDA generator "
                                   f"(trained on a CPU), so the noise drawn on the device would not continue "
                                   f"its sequence; resume on the device it was trained on")
        torch.cuda.set_rng_state(state["cuda"], device)


def save_state(path: Path, state: dict) -> None:
    """Write atomically: a crash mid-write leaves the previous state, never half a file."""
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def load_state(path: Path, required: tuple[str, ...]) -> dict:
    """Load on the CPU (the generators take CPU tensors; the optimiser moves its own state to the
    parameters' device) with weights_only=True, and check the keys a resume needs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ResumeStateError(f"{path} holds more than tensors and plain Python data, so it is not loaded "
                               f"(unpickling it could run code): {str(err).splitlines()[0]}") from None
    if not isinstance(state, dict) or not set(required) <= set(state):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ResumeStateError(f"{path} is not a resume state: expected the keys {sorted(required)}, found {found}")
    return state
