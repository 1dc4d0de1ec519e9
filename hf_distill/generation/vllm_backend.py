"""The `vllm` generation backend (`use_vllm`): in-process vLLM engines over the student (synced with its training
weights in memory before each student-written step whose weights changed) and, for `seq_kd`, over the teacher (built
once, never synced, as the teacher does not train)."""

import time
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from transformers.utils import is_peft_available

from ..arguments.generation_kwargs import parse_generation_kwargs
from ..metrics.names import VLLM_SYNC_SECONDS
from ..teachers.placement import is_deepspeed_zero3
from ..user_errors import UserInputError
from .greedy import greedy_eos
from .hf_generate import Completions
from .seeds import row_seeds
from .vllm_engine import VLLMEngine, random_state_kept

if is_peft_available():
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
else:  # nothing is a PEFT model without peft
    PeftModel = LoraLayer = ()

SETTING = "use_vllm=True"


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 shard (an all-gather: every process calls it for the same tensors), else itself."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


@torch.no_grad()
def engine_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights of `model` under the names of its transformers checkpoint, as vLLM loads them: a PEFT model's
    base weights with each active LoRA adapter merged in (computed beside the module, which is left untouched: merging
    and unmerging in place would round the training weights), `modules_to_save` copies as the module itself; FSDP2
    shards gathered whole."""
    if not isinstance(model, PeftModel):
        for name, tensor in model.state_dict().items():
            yield name, _full(tensor)
        return
    base = model.get_base_model()
    deltas = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            adapters = [a for a in module.active_adapters if a in module.lora_A]
            if adapters:
                deltas[f"{name}.base_layer.weight"] = (module, adapters)
    for name, tensor in base.state_dict().items():
        if "lora_" in name or ".original_module." in name:
            continue
        tensor = _full(tensor)
        if name in deltas:
            module, adapters = deltas[name]
            tensor = tensor + sum(_full(module.get_delta_weight(a)).to(tensor.dtype) for a in adapters)
        yield name.replace(".base_layer.", ".").replace(".modules_to_save.default.", "."), tensor


def _checkpoint_model(model: nn.Module) -> nn.Module:
    """The transformers model whose config and class the engine loads (a PEFT model's base model)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def _engine(model: nn.Module, tokenizer, config, weights: dict[str, torch.Tensor] | None) -> VLLMEngine:
    length = config.vllm_max_model_length or getattr(_checkpoint_model(model).config, "max_position_embeddings", None)
    if length is None:
        raise UserInputError(
            "no context length for vLLM",
            "vllm_max_model_length=None",
            f"{type(model).__name__}'s config has no max_position_embeddings to take it from",
            "set vllm_max_model_length (longest prompt plus max_new_tokens)",
        )
    return VLLMEngine.from_model(
        _checkpoint_model(model),
        tokenizer,
        max_model_len=length,
        state_dict=weights,
        gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        seed=config.seed,
        setting=SETTING,
    )


class VLLMBackend:
    """vLLM's engines; sampling settings map 1:1 (`vllm_engine.sampling_params_kwargs`), each row seeded from its
    place in the run (`seeds.row_seeds`), all micro-batches of a step in one engine call. Every engine call keeps the
    global random states (`vllm_engine.random_state_kept`): training's dropout and data order see no engine."""

    name = "vllm"

    def __init__(self, config, accelerator, tokenizer, student: Callable[[], nn.Module], teacher, eos: int, pad: int):
        if accelerator.num_processes > 1:
            raise UserInputError(
                "vLLM with several processes",
                f"{SETTING}, {accelerator.num_processes} processes",
                "not supported yet: each process would start its own engine on the same devices",
                "launch one process, or set use_vllm: false",
            )
        if is_deepspeed_zero3(accelerator):
            raise UserInputError(
                "vLLM under DeepSpeed ZeRO-3",
                SETTING,
                "not supported yet: the student's weights are partitions outside its forward",
                "use FSDP2 or no sharding, or set use_vllm: false",
            )
        self.config, self.accelerator, self.tokenizer, self.student = config, accelerator, tokenizer, student
        self.eos, self.pad_id = eos, pad
        model = student()
        # A PEFT model's own save writes its adapter alone: the engine's first folder gets the merged weights.
        weights = dict(engine_weights(model)) if isinstance(model, PeftModel) else None
        self.student_engine = _engine(model, tokenizer, config, weights)
        # The teacher of seq_kd never trains: its engine is built once and never synced.
        self.teacher_engine = _engine(teacher, tokenizer, config, None) if config.seq_kd else None
        # The optimizer step whose weights the student's engine holds; None: not synced since it was built (a resumed
        # run loads its checkpoint after the trainer is built).
        self._synced_step: int | None = None
        self._sync_seconds: list[float] = []
        # The hf backend's generation config sets eos_token_id to the tokenizer's, over any generation_kwargs' one:
        # the stop tokens here are the same.
        kwargs = parse_generation_kwargs(config.generation_kwargs)
        self.generation_kwargs = {key: value for key, value in kwargs.items() if key != "eos_token_id"}

    def sync(self, step: int) -> None:
        """Copies the student's weights into its engine unless it holds those of optimizer step `step` already."""
        if self._synced_step == step:
            return
        start = time.perf_counter()
        with random_state_kept():
            self.student_engine.load_weights(engine_weights(self.student()))
        self._sync_seconds.append(time.perf_counter() - start)
        self._synced_step = step

    def complete(self, writer: str, prompts: list[list[list[int]]], step: int) -> list[Completions]:
        if writer == "student":
            self.sync(step)
        engine = self.student_engine if writer == "student" else self.teacher_engine
        process = self.accelerator.process_index
        seeds = [s for i, rows in enumerate(prompts) for s in row_seeds(self.config, step, process, i, len(rows))]
        config = self.config
        with random_state_kept():
            tokens, truncated = engine.generate(
                [row for rows in prompts for row in rows],
                config.max_new_tokens,
                config.generation_temperature,
                config.generation_top_p,
                config.generation_top_k,
                [self.eos],
                seeds,
                self.generation_kwargs,
            )
        completions, start = [], 0
        for rows in prompts:
            completions.append(Completions(tokens[start : start + len(rows)], truncated[start : start + len(rows)]))
            start += len(rows)
        return completions

    def answers(
        self, prompts: list[list[int]], max_new_tokens: int, batch_size: int, synced_gpus: bool, step: int
    ) -> list[str]:
        """Greedy, stopped where `greedy.greedy_generate` stops, decoded as it decodes; one engine call (vLLM
        batches itself: `batch_size` and `synced_gpus` are transformers' concerns)."""
        self.sync(step)
        eos = greedy_eos(self.student(), self.tokenizer)
        with random_state_kept():
            tokens, _ = self.student_engine.generate(
                prompts, max_new_tokens, 0.0, 1.0, 0, eos if isinstance(eos, list) else [eos], [0] * len(prompts)
            )
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in tokens]

    def window_logs(self) -> dict[str, float]:
        """`vllm_sync_seconds`: the mean seconds of the syncs since the last call (none: not logged)."""
        logs = {VLLM_SYNC_SECONDS: sum(self._sync_seconds) / len(self._sync_seconds)} if self._sync_seconds else {}
        self._sync_seconds = []
        return logs
