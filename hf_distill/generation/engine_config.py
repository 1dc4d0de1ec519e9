"""`GenerationEngineArguments`: the fields that choose and size the engine that generates (transformers or vLLM),
a mixin of `DistillConfig` (TRL's names: `use_vllm`, `vllm_mode`, `vllm_gpu_memory_utilization`, ...), and the rules
between them checked when the config is built."""

import importlib.util
from dataclasses import dataclass, field

from ..arguments.field_docs import document_fields
from ..arguments.field_rules import ReadWhen, collect_rules
from ..user_errors import UserInputError
from .vllm_engine import INSTALL_FIX, vllm_generation_kwargs

VLLM_MODES = ("colocate", "server")

_USE_VLLM = ReadWhen("use_vllm", "use_vllm: true", {"use_vllm": True, "lmbda": 1.0})


def vllm_installed() -> bool:
    """Whether this Python can import vLLM, found without importing it (which takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


@document_fields
@collect_rules
@dataclass
class GenerationEngineArguments:
    r"""
    Parameters:
        > Parameters that control the generation engine

        use_vllm (`bool`, *optional*, defaults to `False`):
            Generate with vLLM instead of transformers' `generate`: the on-policy steps (`lmbda`), the teacher's
            `seq_kd` completions and `eval_generate`'s answers. An in-process engine over the student is started when
            the trainer is built, and before each student-written step whose weights changed since the last sync the
            student's current weights are copied into it in memory (no restart, no disk; a PEFT student's merged
            LoRA weights); the seconds each sync took are logged as `vllm_sync_seconds`. `seq_kd` gets a second
            engine over the teacher, never synced. Sampling is the same (`generation_temperature`, `generation_top_p`,
            `generation_top_k`, `max_new_tokens`, the end-of-sequence token), each completion seeded from `seed`, the
            step, the process, the micro-batch and its row; greedy completions are the transformers ones, sampled
            ones are drawn by vLLM's sampler (the same distribution, other draws). Read only when some step generates
            or with `eval_generate`; needs vLLM (`bash scripts/install_vllm.sh`) and one process. See
            docs/on_policy_vllm.md.
        vllm_mode (`str`, *optional*, defaults to `"colocate"`):
            Where vLLM runs: `colocate`, in the training process, sharing its device. `server` (a separate vLLM
            server) is not supported yet.
        vllm_gpu_memory_utilization (`float`, *optional*, defaults to `0.3`):
            Share of the GPU's memory, in (0, 1], vLLM may take for its weights and KV cache (its
            `gpu_memory_utilization`); the rest is training's. Ignored on CPU, where the KV cache is 1 GiB unless
            `VLLM_CPU_KVCACHE_SPACE` (GiB) says otherwise. Read with `use_vllm: true` only.
        vllm_max_model_length (`int`, *optional*, defaults to `None`):
            Longest prompt plus completion, in tokens, >= 1, the engine accepts (its `max_model_len`); a longer
            prompt is an error. `None` takes the student's context length (`max_position_embeddings` of its config;
            the teacher's for its `seq_kd` engine). Read with `use_vllm: true` only.
        vllm_enable_sleep_mode (`bool`, *optional*, defaults to `False`):
            Free the engine's GPU memory between generations (vLLM's sleep mode). Not supported yet: this version has
            not been measured on a GPU, so `true` is refused.
    """

    use_vllm: bool = field(
        default=False,
        metadata={
            "read_when": ReadWhen(
                lambda config: config.generates or config.eval_generate,
                "lmbda > 0, seq_kd: true or eval_generate: true",
                {"lmbda": 1.0},
                why="nothing generates: lmbda is {lmbda}, seq_kd is {seq_kd} and eval_generate is {eval_generate}",
            )
        },
    )
    vllm_mode: str = field(default="colocate", metadata={"choices": list(VLLM_MODES)})
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata={"range": "(0, 1]", "read_when": _USE_VLLM})
    vllm_max_model_length: int | None = field(default=None, metadata={"range": "[1, inf)", "read_when": _USE_VLLM})
    vllm_enable_sleep_mode: bool = False


def check_generation_engine(config, generation_kwargs: dict) -> None:
    """The rules of the engine fields between themselves and the rest of `config` (a `DistillConfig` whose declared
    rules passed; `generation_kwargs` parsed), each refused in one line before anything loads."""
    if config.vllm_mode == "server":
        raise UserInputError(
            "vLLM server mode",
            "vllm_mode='server'",
            "not supported yet",
            "use colocate (vllm_mode: colocate, vLLM in the training process)",
        )
    if config.vllm_enable_sleep_mode:
        raise UserInputError(
            "vLLM sleep mode",
            "vllm_enable_sleep_mode=True",
            "not supported yet: it only frees GPU memory, and this version was not measured on a GPU",
            "remove vllm_enable_sleep_mode (or lower vllm_gpu_memory_utilization)",
        )
    if not config.use_vllm:
        return
    if not vllm_installed():
        raise UserInputError(
            "vLLM is not installed",
            "use_vllm=True",
            "this setting generates with vLLM, which this Python cannot find",
            INSTALL_FIX,
        )
    # What vLLM's sampler cannot do is refused here rather than at the first generating step.
    vllm_generation_kwargs(generation_kwargs)
