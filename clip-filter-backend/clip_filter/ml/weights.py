"""Loading trained weights without holding the model twice.

open_clip's own path builds the model with randomly initialised fp32 weights and then copies a full fp32
state dict into it: for a moment the process holds two fp32 copies (ViT-B-32: 2 x 605 MB), and with a
reduced precision the cast comes on top. Here the model is built with its parameters on PyTorch's
"meta" device (no memory, no init work), and every parameter is then taken from the checkpoint,
converted to the target device and dtype one tensor at a time, and assigned, while the file is
memory-mapped and each tensor's pages are handed back once converted. Peak memory is about the model
in its own dtype plus one tensor.

Buffers are built for real: some are computed at construction and are not in checkpoints (the text
tower's causal attention mask). This is the idea of accelerate's `init_empty_weights(include_buffers=False)`,
done with PyTorch's own module registration hooks rather than a dependency.

Random weights do not come this way: their values come from open_clip's initialisation, which needs real
fp32 tensors, and must not depend on the precision the model then runs in.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import open_clip
import torch
import torch.utils.serialization as torch_serialization
from torch import nn
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook,
)

from clip_filter.core.memory import drop_file_pages, file_mappings
from clip_filter.ml.precision import FLOAT32_SCALARS

_hooks_lock = threading.Lock()


class BuiltBuffers:
    """The buffers modules registered while being built, by module, with their real values."""

    def __init__(self) -> None:
        self.by_module: dict[nn.Module, dict[str, torch.Tensor]] = {}

    def restore(self, model: nn.Module) -> None:
        """Put the recorded real values back where `model.to("meta")` replaced buffers with empty ones."""
        for module in model.modules():
            recorded = self.by_module.get(module, {})
            for name, buffer in module._buffers.items():
                if buffer is not None and buffer.is_meta and name in recorded:
                    module._buffers[name] = recorded[name]


@contextmanager
def parameters_on_meta() -> Iterator[BuiltBuffers]:
    """Modules built inside this block get their parameters on the meta device (no memory, no init work).

    Buffers are built for real and recorded, so that after open_clip moves the whole model to "meta"
    (`device="meta"`, which it needs to accept meta parameters) `BuiltBuffers.restore` can put them back.
    The hooks are PyTorch's global registration hooks: a lock keeps two loads from overlapping, and no
    other thread should build modules meanwhile (the service builds one model, on one thread).
    """
    built = BuiltBuffers()

    def parameter_to_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> nn.Parameter | None:
        if param is None or param.is_meta:
            return None
        return type(param)(param.to("meta"), requires_grad=param.requires_grad)

    def record_buffer(module: nn.Module, name: str, buffer: torch.Tensor | None) -> None:
        if buffer is not None:
            built.by_module.setdefault(module, {})[name] = buffer

    with _hooks_lock:
        handles = [
            # torch registers the Parameter a hook returns instead (documented); its stub types the hook -> None.
            register_module_parameter_registration_hook(parameter_to_meta),  # type: ignore[arg-type]
            register_module_buffer_registration_hook(record_buffer),
        ]
        try:
            yield built
        finally:
            for handle in handles:
                handle.remove()


class _DropRandomInitNotice(logging.Filter):
    """open_clip warns "Model initialized randomly" when it is not given weights; here they come next."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextmanager
def without_random_init_notice() -> Iterator[None]:
    notice_filter = _DropRandomInitNotice()
    logging.getLogger().addFilter(notice_filter)  # open_clip logs through the root logger
    try:
        yield
    finally:
        logging.getLogger().removeFilter(notice_filter)


def _target_dtype(key: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    if not tensor.is_floating_point():
        return tensor.dtype  # integer buffers (token ids and the like) keep theirs
    if key.rsplit(".", 1)[-1] in FLOAT32_SCALARS:
        return torch.float32
    return dtype


def load_checkpoint_into(model: nn.Module, path: str, device: torch.device, dtype: torch.dtype) -> None:
    """Fill `model` (built under `parameters_on_meta`) from the checkpoint at `path`, on `device` in `dtype`.

    open_clip's `load_checkpoint` reads the file and adapts it (OpenAI / timm / big_vision layouts,
    resized position embeddings); only its final `load_state_dict` is replaced, by one that converts each
    tensor on its own and assigns it. The file is memory-mapped (safetensors always is; PyTorch's zip
    format with `mmap`), and once a tensor is converted its pages are handed back: peak memory is the
    model in its dtype plus one tensor, not a full fp32 copy of the checkpoint.
    Raises RuntimeError (from PyTorch) on missing, unexpected or misshapen keys.
    """

    def convert_and_assign(state_dict: dict[str, torch.Tensor], strict: bool = True) -> Any:
        mappings = file_mappings(path)  # where the checkpoint's pages are, if it is mapped
        converted: dict[str, torch.Tensor] = {}
        for key in list(state_dict):
            tensor = state_dict.pop(key)
            storage = tensor.untyped_storage()
            value = tensor.to(device=device, dtype=_target_dtype(key, tensor, dtype))
            if mappings and value.untyped_storage().data_ptr() == storage.data_ptr():
                value = value.clone()  # same device and dtype: copy, so the model never reads the file's pages
            drop_file_pages(storage.data_ptr(), storage.nbytes(), mappings)
            converted[key] = value
            del tensor, storage
        return nn.Module.load_state_dict(model, converted, strict=strict, assign=True)

    # An instance attribute shadows the method for this one call; open_clip calls model.load_state_dict.
    model.load_state_dict = convert_and_assign  # type: ignore[method-assign,assignment]
    try:
        try:
            with torch_load_mmap(True):
                open_clip.load_checkpoint(model, path, strict=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            with torch_load_mmap(False):  # PyTorch's legacy (pre-zip) format cannot be mapped: read it whole
                open_clip.load_checkpoint(model, path, strict=True)
    finally:
        del model.load_state_dict
    still_empty = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if still_empty:
        raise RuntimeError(f"the checkpoint has no values for {len(still_empty)} tensors, e.g. {still_empty[:3]}")


@contextmanager
def torch_load_mmap(enabled: bool) -> Iterator[None]:
    """Make `torch.load` (called inside open_clip) memory-map the file, through PyTorch's own setting."""
    config = torch_serialization.config.load
    previous = config.mmap
    config.mmap = enabled
    try:
        yield
    finally:
        config.mmap = previous
