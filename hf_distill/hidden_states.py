"""Running a causal LM to its final hidden states, without the `(tokens x vocabulary)` logits, through whatever
wrapper (DDP, FSDP2) the engine put around it; and the LM head that turns them into logits."""

import inspect
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from .losses import LMHead

# Positions to project: none. The wrapped forward still runs the LM head (on zero positions), so DDP counts its
# weight as used and FSDP2 gathers it, while the hidden states go to the chunked loss instead.
_NO_POSITIONS = torch.empty(0, dtype=torch.long)


def supports_hidden_states(model: nn.Module) -> bool:
    """A transformers causal LM with a decoder, a linear output head and `logits_to_keep`."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    decoder = getattr(model, "get_decoder", lambda: None)()
    return (
        isinstance(head, nn.Linear)
        and decoder is not None
        and "logits_to_keep" in inspect.signature(model.forward).parameters
    )


def _full(tensor: torch.Tensor | None) -> torch.Tensor | None:
    # An FSDP2 parameter read outside its module's forward may still be a shard; the loss needs the whole matrix.
    if isinstance(tensor, DTensor):
        return tensor.full_tensor()
    # A DeepSpeed ZeRO-3 one is an empty partition there, and gathering it would leave its gradient no partition to
    # land in: the trainer takes the dense path under ZeRO-3, and anything else reading the head fails here, loudly.
    full_shape = getattr(tensor, "ds_shape", None)
    if full_shape is not None and tensor.shape != full_shape:
        raise ValueError(
            f"the LM head holds a DeepSpeed ZeRO-3 partition of shape {tuple(tensor.shape)} (full shape "
            f"{tuple(full_shape)}), which the chunked loss cannot read; set loss_chunk_size=0 under ZeRO-3"
        )
    return tensor


def lm_head(model: nn.Module) -> LMHead:
    """The model's output head, whole, with the logit scale and final-logit soft-cap its config sets."""
    head = model.get_output_embeddings()
    config = model.config.get_text_config()
    scale = getattr(model, "logit_scale", None) or getattr(config, "logit_scale", None) or 1.0
    return LMHead(
        weight=_full(head.weight),
        bias=_full(head.bias),
        logit_scale=float(scale),
        softcap=getattr(config, "final_logit_softcapping", None),
    )


@contextmanager
def _capture_decoder_output(model: nn.Module):
    captured = {}

    def hook(module, args, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = model.get_decoder().register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def final_hidden_states(wrapped: nn.Module, unwrapped: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """`(B, L, H)` final hidden states (after the final norm), from a forward through `wrapped`."""
    with _capture_decoder_output(unwrapped) as captured:
        wrapped(**inputs, logits_to_keep=_NO_POSITIONS.to(inputs["input_ids"].device))
    return captured["hidden"]
