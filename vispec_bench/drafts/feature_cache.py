"""`train --feature-dir DIR`: teacher features on disk, shared by every offline `train` run on the
same rows and target (the testbed build trains ~10 drafts on one gen-data output; each run would
otherwise repeat every row's target prefill).

Layout: DIR/<signature id>/signature.json + one `<row key>.safetensors` per row.

- The signature pins everything the features depend on besides the row: the target's weights
  (sha256 over every parameter and buffer, so a retrained vision tower or a LoRA merge changes
  it), its config, class, dtype and device type, the processor (chat template, vocabulary, image
  processing), the decoder layers whose inputs are captured (EAGLE-3's `layer_features`; the
  other methods capture none), the file format and the torch / transformers versions. Each
  signature gets its own sub-folder, so EAGLE-3's features and the others' (or those of two
  targets) live side by side in one DIR and no run has to choose; a folder whose signature.json
  differs from the one its name stands for is refused, never reused.
- The row key hashes exactly what `teacher_features` reads: the messages, the images' RGB pixels
  and the answer ids. Rows of two gen-data outputs share features only where their content is
  identical, whatever the directory or sample id; a regenerated answer gets a new key.
- Files hold the float32 tensors `teacher_features` returns (loss_mask bool, input_ids int64),
  prompt length and image spans in the safetensors metadata: training from them is bit-identical
  to recomputing. Writes go to a temporary file that is renamed into place, so an interrupted run
  leaves no partial row file; a file that cannot be read or does not match its row (e.g. damaged
  on disk) is recomputed and rewritten, with a message naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import torch

from vispec_bench.errors import InputError

FORMAT = 1
SIGNATURE = "signature.json"
SUFFIX = ".safetensors"


def _sha256_json(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes), in name order. The
    whole model, not a sample of tensors: a build may change a few tensors only (a projector, a
    LoRA merge), and hashing reads the weights once (about a second per 500 MB on a CPU)."""
    digest = hashlib.sha256()
    named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for name in sorted(named):
        tensor = named[name].detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        data = tensor.contiguous().reshape(-1).view(torch.uint8).cpu()  # raw bytes, whatever the dtype
        digest.update(data.numpy())  # hashed in place, no copy
    return digest.hexdigest()


def processor_sha256(processor) -> str:
    """What turns a row into prompt ids and pixels: chat template, vocabulary, image processing."""
    tokenizer = getattr(processor, "tokenizer", processor)
    parts = {"class": type(processor).__name__,
             "chat_template": getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None),
             "vocab": sorted(tokenizer.get_vocab().items())}
    if processor is not tokenizer:  # a multimodal processor: image size, normalisation, image-token count
        parts["processor"] = processor.to_json_string()
    return _sha256_json(parts)


def feature_signature(adapter) -> dict:
    from transformers import __version__ as transformers_version

    from vispec_bench.drafts.checkpoints import target_signature

    config = {k: v for k, v in adapter.model.config.to_dict().items() if k != "_name_or_path"}
    target = {k: v for k, v in target_signature(adapter).items() if k != "name_or_path"}  # a path is not content
    captured = adapter.captured_layer_ids
    return {"format": FORMAT, "target": target, "model_class": type(adapter.model).__name__,
            "config_sha256": _sha256_json(config), "weights_sha256": weights_sha256(adapter.model),
            "processor_sha256": processor_sha256(adapter.processor), "dtype": str(adapter.dtype),
            "device_type": adapter.device.type, "captured_layers": None if captured is None else list(captured),
            "torch": torch.__version__, "transformers": transformers_version}


def row_key(messages_json: str, images: list, answer_ids: list[int]) -> str:
    """sha256 of the inputs of teacher_features: messages (as stored), RGB images, answer ids."""
    digest = hashlib.sha256(messages_json.encode())
    for image in images:
        digest.update(f"|{image.mode}|{image.size}|".encode())
        digest.update(image.tobytes())
    digest.update(json.dumps(list(answer_ids)).encode())
    return digest.hexdigest()


class FeatureDir:
    """One signature's folder of DIR: `load` a row's features (None when absent or unusable) and
    `store` what was computed."""

    def __init__(self, root: str | Path, adapter, log=print):
        self.adapter, self.log = adapter, log
        signature = feature_signature(adapter)
        self.folder = Path(root) / _sha256_json(signature)[:16]
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / SIGNATURE
        if path.exists():
            stored = json.loads(path.read_text())
            if stored != signature:
                changed = sorted(k for k in set(stored) | set(signature) if stored.get(k) != signature.get(k))
                raise InputError(f"{path} does not describe the features its folder name stands for (differs in "
                                 f"{', '.join(changed)}): the folder was edited or copied; remove {self.folder} "
                                 "(its features are recomputed) or use another --feature-dir")
        else:
            _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(signature, indent=2) + "\n"))
        self.num_loaded = self.num_stored = 0

    def load(self, key: str, answer_ids: list[int]) -> dict | None:
        """TeacherFeatures fields of the row `key`, on the adapter's device; None when not stored."""
        from safetensors import SafetensorError, safe_open

        path = self.folder / (key + SUFFIX)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), "pt", device=str(self.adapter.device)) as file:
                metadata = file.metadata() or {}
                fields = {name: file.get_tensor(name) for name in file.keys()}
            fields["prompt_length"] = int(metadata["prompt_length"])
            fields["image_spans"] = [tuple(span) for span in json.loads(metadata["image_spans"])]
            fields.setdefault("layer_features", None)
            self._check(fields, answer_ids)
        except (SafetensorError, OSError, ValueError, KeyError) as error:
            self.log(f"feature cache: {path} is unreadable or does not match its row ({error}); recomputing it")
            return None
        self.num_loaded += 1
        return fields

    def _check(self, fields: dict, answer_ids: list[int]) -> None:
        """A file must hold this row's features in the layout teacher_features returns."""
        ids, prompt_length = fields["input_ids"], fields["prompt_length"]
        num_tokens, hidden_size = ids.shape[0], self.adapter.hidden_size
        num_captured = len(self.adapter.captured_layer_ids or ())
        expected = {"input_ids": ((num_tokens,), torch.int64), "loss_mask": ((num_tokens,), torch.bool),
                    "input_embeds": ((num_tokens, hidden_size), torch.float32),
                    "hidden": ((num_tokens, hidden_size), torch.float32)}
        if num_captured:
            expected["layer_features"] = ((num_tokens, num_captured * hidden_size), torch.float32)
        elif fields["layer_features"] is not None:
            raise ValueError("holds layer_features, but no decoder layers are captured")
        for name, (shape, dtype) in expected.items():
            tensor = fields.get(name)
            if tensor is None or tuple(tensor.shape) != shape or tensor.dtype != dtype:
                found = "nothing" if tensor is None else f"{tuple(tensor.shape)} {tensor.dtype}"
                raise ValueError(f"expected {name} of shape {shape} {dtype}, found {found}")
        if ids[prompt_length:].tolist() != list(answer_ids):
            raise ValueError("its answer ids are not the row's")

    def store(self, key: str, features) -> None:
        from safetensors.torch import save_file

        tensors = {"input_ids": features.input_ids, "input_embeds": features.input_embeds,
                   "hidden": features.hidden, "loss_mask": features.loss_mask}
        if features.layer_features is not None:
            tensors["layer_features"] = features.layer_features
        tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
        metadata = {"format": str(FORMAT), "prompt_length": str(int(features.prompt_length)),
                    "image_spans": json.dumps([list(map(int, span)) for span in features.image_spans])}
        _atomic_write(self.folder / (key + SUFFIX), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        self.num_stored += 1

    def __str__(self) -> str:
        return str(self.folder)


def _atomic_write(path: Path, write) -> None:
    """`write(tmp)` then rename over `path`: readers see the old file or the whole new one. The
    temporary name is unique per writer (processes of one run may store the same row)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as file:
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
