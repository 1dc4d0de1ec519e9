"""Running a causal LM to its final hidden states, without the `(tokens x vocabulary)` logits, through whatever
wrapper (DDP, FSDP2) the engine put around it; and the LM head that turns them into logits."""

import inspect
import logging
import math
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from ..losses import LOSS_CHUNK_SIZE, LMHead
from ..user_errors import UserInputError

logger = logging.getLogger(__name__)

# Positions to project: none. The wrapped forward still runs the LM head (on zero positions), so DDP counts its
# weight as used and FSDP2 gathers it, while the hidden states go to the chunked loss instead.
_NO_POSITIONS = torch.empty(0, dtype=torch.long)


def _full(tensor: torch.Tensor | None) -> torch.Tensor | None:
    # An FSDP2 parameter read outside its module's forward may still be a shard; the loss needs the whole matrix.
    if isinstance(tensor, DTensor):
        return tensor.full_tensor()
    # A DeepSpeed ZeRO-3 one is an empty partition there, and gathering it would leave its gradient no partition to
    # land in: the trainer takes the dense path under ZeRO-3, and anything else reading the head fails here, loudly.
    full_shape = getattr(tensor, "ds_shape", None)
    if full_shape is not None and tensor.shape != full_shape:
        raise UserInputError(
            "partitioned LM head",
            "loss_chunk_size",
            f"the LM head holds a DeepSpeed ZeRO-3 partition of shape {tuple(tensor.shape)} (full shape "
            f"{tuple(full_shape)}), which the chunked loss cannot read",
            "set loss_chunk_size=0 under ZeRO-3",
        )
    return tensor


def lm_head(model: nn.Module) -> LMHead:
    """The model's output head, whole, with the logit multiplier and final-logit soft-cap its config sets."""
    weight, bias = _head_tensors(model.get_output_embeddings())
    config = model.config.get_text_config()
    return LMHead(
        weight=_full(weight),
        bias=_full(bias),
        logit_scale=logit_multiplier(model, config),
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


# ---- the fused head checked against the model's own logits ----

# Config fields of logits post-processed by a constant factor after the LM head, as the architectures apply them
# (TRL's DistillationTrainer lists the same): Falcon-H1 multiplies by `lm_head_multiplier`, Muse by
# `output_multiplier`; `logits_scaling` divides for Granite (and MiniCPM3, which divides the hidden states, the same
# for a head without bias) but multiplies for HyperCLOVA X. The probe (`fused_heads_reproduce_logits`) checks each.
_MULTIPLYING_FIELDS = ("lm_head_multiplier", "output_multiplier")
_MULTIPLYING_LOGITS_SCALING = ("hyperclovax",)

# Tokens of the probe input: a few positions are enough to see a post-processing the head does not reproduce.
PROBE_IDS = (1, 2, 3, 5, 8)


def logit_multiplier(model: nn.Module, config) -> float:
    """The constant factor the model applies to its LM head's output: Cohere's `logit_scale`, times the factors of
    `_MULTIPLYING_FIELDS` and `logits_scaling` that `config` sets."""
    scale = float(getattr(model, "logit_scale", None) or getattr(config, "logit_scale", None) or 1.0)
    for name in _MULTIPLYING_FIELDS:
        scale *= float(getattr(config, name, None) or 1.0)
    scaling = getattr(config, "logits_scaling", None)
    if scaling:
        multiplies = str(getattr(config, "model_type", "")).startswith(_MULTIPLYING_LOGITS_SCALING)
        scale = scale * scaling if multiplies else scale / scaling
    return scale


def _lora_head_tensors(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | str:
    """Weight and bias of a PEFT LoRA layer as one linear map (base weight + each active adapter's delta, kept in
    the autograd graph), or why it is not one."""
    base = head.get_base_layer()
    if getattr(head, "merged", False) or getattr(head, "disable_adapters", False):
        return base.weight, base.bias
    weight = base.weight
    for name in head.active_adapters:
        if name not in head.lora_A:
            continue
        # Dropout acts on the adapter's input, DoRA rescales by the weight's norm and a LoRA bias adds one: none is a
        # fixed matrix the chunked loss could multiply by.
        if not isinstance(head.lora_dropout[name], nn.Identity):
            return f"its LoRA LM head has lora_dropout={head.lora_dropout[name].p}"
        if head.use_dora.get(name) or getattr(head, "lora_bias", {}).get(name):
            return "its LoRA LM head uses DoRA or a LoRA bias"
        weight = weight + head.get_delta_weight(name).to(weight.dtype)
    return weight, base.bias


def _head_tensors(head: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor | None] | str:
    """Weight and bias of the output head: a linear layer, PEFT's `modules_to_save` copy of one (whose `weight` is the
    trained copy) or a LoRA layer over one; else why not."""
    if isinstance(head, nn.Linear):
        return head.weight, head.bias
    if hasattr(head, "lora_A") and hasattr(head, "get_base_layer"):
        return _lora_head_tensors(head)
    if hasattr(head, "modules_to_save") and isinstance(getattr(head, "original_module", None), nn.Linear):
        return head.weight, head.bias
    return f"its output head is a {type(head).__name__}, not a linear layer"


def _unsupported(model: nn.Module) -> str | None:
    """Why the chunked loss cannot read `model` (a transformers causal LM, or a PEFT model over one), or None."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if head is None or getattr(model, "get_decoder", lambda: None)() is None:
        return "it has no output head or no decoder"
    tensors = _head_tensors(head)
    if isinstance(tensors, str):
        return tensors
    if not tensors[0].is_floating_point():
        return f"its LM head weight is {tensors[0].dtype} (quantized), which the chunked loss cannot multiply by"
    # A PEFT model's forward passes its keyword arguments on to the model it wraps.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if "logits_to_keep" not in inspect.signature(base.forward).parameters:
        return f"{type(base).__name__}.forward takes no logits_to_keep"
    return None


def _probe_difference(wrapped: nn.Module, unwrapped: nn.Module) -> tuple[float, float]:
    """Largest difference between `lm_head(unwrapped)` applied to the final hidden states and the model's own logits,
    on a probe input, in eval mode (restored after) and in the model's dtype; and the tolerance of that dtype."""
    head = lm_head(unwrapped)
    ids = torch.tensor([PROBE_IDS], device=head.weight.device).remainder(head.vocab_size)
    training = wrapped.training
    wrapped.eval()
    try:
        with torch.no_grad():
            own = wrapped(input_ids=ids).logits
            hidden = final_hidden_states(wrapped, unwrapped, {"input_ids": ids})
            fused = head.detach().logits(hidden.to(head.weight.dtype))
    finally:
        wrapped.train(training)
        # FSDP2 leaves the last units of a forward (final norm, LM head) unsharded for the backward, which a no-grad
        # probe never runs: left so, `parameters()` would hand an optimizer the unsharded copies, not the shards.
        for module in wrapped.modules():
            if isinstance(module, FSDPModule):
                module.reshard()
    if fused.shape != own.shape:
        return float("inf"), 0.0
    difference = (fused.float() - own.float()).abs().max().item()
    # The same operations in the same dtype differ by rounding only: a few units in the last place of the largest
    # logit (float32: ~1e-6 relative; bfloat16: 3%, which is all that dtype resolves).
    tolerance = 4 * torch.finfo(head.weight.dtype).eps * max(1.0, own.float().abs().max().item())
    return difference, tolerance


def fused_heads_reproduce_logits(models: list[nn.Module], unwrap, loss_chunk_size: int | None = None) -> bool:
    """Whether the chunked loss may stand in for each model's own logits (`unwrap` strips the engine's wrapper).

    Each model must be readable (`_unsupported`) and `lm_head` on its final hidden states must equal its own logits
    on a probe input: an architecture that post-processes its logits in a way `LMHead` does not know is caught here
    instead of training on other logits. The first model that fails is named: in one logged warning when
    `loss_chunk_size` is None (auto; the trainer then uses the dense path, which is exact for every model), in a
    one-line ValueError when the user set `loss_chunk_size` > 0 and so asked for the chunked loss (unless the probe's
    logits are not finite: the dense path then stops the run on them, naming the examples).
    """
    for model in models:
        unwrapped = unwrap(model)
        base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
        name = type(base).__name__ if base is unwrapped else f"{type(base).__name__} (in a {type(unwrapped).__name__})"
        problem, nonfinite = _unsupported(unwrapped), False
        if problem is None:
            difference, tolerance = _probe_difference(model, unwrapped)
            if math.isnan(difference):
                # Non-finite logits (NaN or inf weights): on the dense path the check of the teacher's logits then
                # stops the run at its first step, naming the examples; the chunked loss never has those logits.
                # That stop, not the chunk size, is what the user must hear of, even with an explicit chunk size.
                problem, nonfinite = "its logits on a probe input are not finite", True
            elif difference > tolerance:
                problem = (
                    f"its LM head on the final hidden states differs from its own logits by {difference:.3g} "
                    f"(tolerance {tolerance:.3g}): its forward post-processes the logits in a way the chunked loss "
                    "does not know"
                )
        if problem is None:
            continue
        if loss_chunk_size is not None and not nonfinite:
            raise UserInputError(
                f"the chunked loss cannot take {name}",
                f"loss_chunk_size={loss_chunk_size}",
                problem,
                "set loss_chunk_size: 0 (dense), or leave it unset to fall back to the dense path with a warning",
            )
        logger.warning(f"loss_chunk_size: {name} takes the dense loss (full logits), because {problem}")
        return False
    return True


def fused_loss_path(teacher, student: nn.Module, unwrap, loss_chunk_size: int | None, zero3: bool) -> bool:
    """Whether this run trains with the fused chunked loss; decided once, when the trainer is built, and logged.

    `teacher` is the run's `hf_distill.teachers.protocol.Teacher`, `loss_chunk_size` the config's (None: auto),
    `zero3` whether DeepSpeed ZeRO-3 partitions the weights: the chunked loss reads the LM head's weight outside its
    module's forward, where ZeRO-3 holds an empty partition, and a weight gathered there would leave the gradient
    the loss computes for it no partition to land in. Each model's head is then probed against its own logits
    (`fused_heads_reproduce_logits`)."""
    chunk = LOSS_CHUNK_SIZE if loss_chunk_size is None else loss_chunk_size
    if chunk == 0:
        reason = "loss_chunk_size is 0"
    elif not teacher.fused:
        reason = f"the {teacher.kind} teacher gives full logits only"
        logger.warning(f"loss_chunk_size={chunk} does not apply: {reason}, so the loss takes them (dense path)")
    elif zero3:
        reason = "DeepSpeed ZeRO-3 partitions the LM heads"
    elif not fused_heads_reproduce_logits([student, *teacher.models], unwrap, loss_chunk_size):
        reason = "a model's LM head does not reproduce its logits"
    else:
        logger.info(f"loss: fused, {chunk} target tokens per chunk")
        return True
    logger.info(f"loss: dense (full logits), because {reason}")
    return False
