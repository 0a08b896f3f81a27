"""Draft-training resume state: every generator comes back (the device's included) and the file
loads with weights_only=True or not at all."""

import random

import pytest
import torch

from vispec_bench.drafts import resume_state
from vispec_bench.drafts.resume_state import ResumeStateError, load_state, restore_rng_state, rng_state, save_state

REQUIRED = ("step", "rng")


def _draws() -> tuple:
    return torch.rand(3).tolist(), random.random(), random.gauss(0, 1)


def test_cpu_and_python_generators_continue_after_a_round_trip(tmp_path):
    torch.manual_seed(1)
    random.seed(1)
    random.gauss(0, 1)  # leaves a cached second Gaussian: part of Python's state
    save_state(tmp_path / "state.pt", {"step": 5, "rng": rng_state("cpu")})
    expected = _draws()
    torch.manual_seed(99)
    random.seed(99)
    restore_rng_state(load_state(tmp_path / "state.pt", REQUIRED)["rng"], "cpu")
    assert _draws() == expected
    assert torch.load(tmp_path / "state.pt", weights_only=True)["step"] == 5


class FakeCuda:
    """Stands in for torch.cuda's generator calls, so the CUDA path is checked on a CPU machine."""

    def __init__(self):
        self.state = torch.tensor([7, 7, 7], dtype=torch.uint8)
        self.restored = []

    def get_rng_state(self, device):
        return self.state.clone()

    def set_rng_state(self, state, device):
        self.restored.append((state.tolist(), device))


def test_the_cuda_generator_is_saved_and_restored_when_training_on_cuda(tmp_path, monkeypatch):
    fake = FakeCuda()
    monkeypatch.setattr(resume_state.torch.cuda, "get_rng_state", fake.get_rng_state)
    monkeypatch.setattr(resume_state.torch.cuda, "set_rng_state", fake.set_rng_state)
    save_state(tmp_path / "state.pt", {"step": 1, "rng": rng_state("cuda:0")})
    state = load_state(tmp_path / "state.pt", REQUIRED)
    restore_rng_state(state["rng"], "cuda:0")
    assert fake.restored == [([7, 7, 7], "cuda:0")]
    with pytest.raises(ResumeStateError, match="saved without a CUDA generator"):
        restore_rng_state(rng_state("cpu"), "cuda:0")


class Payload:
    """Anything but tensors and plain data: unpickling it would call into this module."""


def test_a_state_file_with_objects_is_refused(tmp_path):
    torch.save({"step": 1, "rng": Payload()}, tmp_path / "state.pt")
    with pytest.raises(ResumeStateError, match="holds more than tensors and plain Python data"):
        load_state(tmp_path / "state.pt", REQUIRED)
    torch.save({"step": 1}, tmp_path / "partial.pt")
    with pytest.raises(ResumeStateError, match=r"expected the keys \['rng', 'step'\], found \['step'\]"):
        load_state(tmp_path / "partial.pt", REQUIRED)
