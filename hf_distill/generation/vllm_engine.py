"""vLLM as the generation engine: an in-process `vllm.LLM` over the student's weights, synced in memory.

The engine is built once (`VLLMEngine.from_model` writes the config, weights and tokenizer to a temporary folder for
vLLM to load, then deletes it); every later weight sync goes tensor by tensor through `load_weights`, never through
disk. vLLM is imported lazily, so the package imports without it; `require_vllm` turns its absence into one line.
"""

import contextlib
import os
import random
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..user_errors import UserInputError

INSTALL_FIX = "install it with: bash scripts/install_vllm.sh"

# KV cache of an engine on CPU, where vLLM would otherwise size it from the machine's memory; vLLM's own
# VLLM_CPU_KVCACHE_SPACE (GiB), when set, wins.
CPU_KV_CACHE_BYTES = 1 << 30

# transformers.GenerationConfig fields (from `generation_kwargs`) -> the vLLM SamplingParams field that means the same.
# HF and vLLM apply repetition_penalty to prompt and completion tokens alike, min_new_tokens/min_tokens both hold back
# every stop token, and min_p is relative to the most likely token in both.
GENERATION_KWARGS_TO_VLLM = {
    "repetition_penalty": "repetition_penalty",
    "min_new_tokens": "min_tokens",
    "min_p": "min_p",
}
# Fields that change nothing vLLM samples: accepted and dropped.
GENERATION_KWARGS_WITHOUT_EFFECT = frozenset({"pad_token_id", "bos_token_id", "use_cache"})


def require_vllm(setting: str):
    """The `vllm` module; `setting` (e.g. `use_vllm=True`) names what asked for it in the error when it is missing."""
    try:
        import vllm
    except ImportError as err:
        raise UserInputError(
            "vLLM is not installed",
            setting,
            f"this setting generates with vLLM, which this Python cannot import ({err})",
            INSTALL_FIX,
        ) from None
    return vllm


def vllm_generation_kwargs(generation_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """`generation_kwargs` (transformers names) as SamplingParams fields; a key vLLM cannot honour is refused in one
    line rather than dropped, so a run never samples differently from what its recipe says."""
    mapped = {}
    for key, value in (generation_kwargs or {}).items():
        if key in GENERATION_KWARGS_WITHOUT_EFFECT:
            continue
        if key == "eos_token_id":
            # Stops generation in both; the caller's stop tokens are added to these.
            mapped["stop_token_ids"] = list(value) if isinstance(value, (list, tuple)) else [value]
        elif key in GENERATION_KWARGS_TO_VLLM:
            mapped[GENERATION_KWARGS_TO_VLLM[key]] = value
        else:
            supported = sorted([*GENERATION_KWARGS_TO_VLLM, "eos_token_id", *GENERATION_KWARGS_WITHOUT_EFFECT])
            raise UserInputError(
                "generation setting not available with vLLM",
                f"generation_kwargs[{key!r}]",
                f"vLLM's sampler has no equivalent of transformers' {key!r}",
                f"remove it, or generate with transformers; vLLM takes {', '.join(supported)}",
            )
    return mapped


def sampling_params_kwargs(
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    stop_token_ids: Sequence[int],
    seed: int,
    generation_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of one row's `vllm.SamplingParams`, our settings mapped 1:1: temperature 0 is greedy in
    both, and top_k 0 is "no top-k" in both (vLLM 0.32: "Set to 0 (or -1) to consider all tokens")."""
    kwargs = vllm_generation_kwargs(generation_kwargs)
    stops = list(dict.fromkeys([*stop_token_ids, *kwargs.pop("stop_token_ids", [])]))
    return dict(
        kwargs,
        max_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        stop_token_ids=stops,
        seed=seed,
        # Token ids are all we read; the text would be decoded for nothing.
        detokenize=False,
    )


@contextlib.contextmanager
def random_state_kept():
    """Restores Python's, numpy's and torch's global random states: an in-process vLLM seeds all three with its own
    `seed` as it starts, which would change the training run's dropout and data order."""
    python, generator = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        yield
    random.setstate(python)
    np.random.set_state(generator)


def dtype_name(dtype: torch.dtype | str) -> str:
    """`torch.bfloat16` or `"bfloat16"` -> `"bfloat16"`, vLLM's spelling."""
    return str(dtype).removeprefix("torch.")


class VLLMEngine:
    """An in-process `vllm.LLM` over `model` (a model folder) and `tokenizer` (a tokenizer folder).

    `dtype` is the run's (`torch.float32`, `"bfloat16"`, ...); `gpu_memory_utilization` is the share of the GPU vLLM
    may take (ignored on CPU, where the KV cache is `CPU_KV_CACHE_BYTES` unless VLLM_CPU_KVCACHE_SPACE says); the
    engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0 while it starts), which `load_weights` needs to hand
    it tensors without copying them to another process.
    """

    def __init__(
        self,
        model: str,
        tokenizer: str,
        dtype: torch.dtype | str,
        max_model_len: int,
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool = True,
        seed: int = 0,
        setting: str = "VLLMEngine",
    ):
        vllm = require_vllm(setting)
        from vllm.platforms import current_platform

        extra = {}
        if current_platform.is_cpu() and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            extra["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        previous = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        try:
            with random_state_kept():
                self.llm = vllm.LLM(
                    model=model,
                    tokenizer=tokenizer,
                    dtype=dtype_name(dtype),
                    max_model_len=max_model_len,
                    gpu_memory_utilization=gpu_memory_utilization,
                    enforce_eager=enforce_eager,
                    seed=seed,
                    # The model folder's generation_config.json must not change sampling: every setting is ours.
                    generation_config="vllm",
                    **extra,
                )
        finally:
            if previous is None:
                del os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"]
            else:
                os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = previous
        self.max_model_len = max_model_len

    @classmethod
    def from_model(
        cls, model: nn.Module, tokenizer, max_model_len: int, state_dict: dict | None = None, **kwargs
    ) -> "VLLMEngine":
        """An engine over the weights of `model` (a transformers causal LM), or over `state_dict` (its checkpoint
        names) with `model`'s config, and `tokenizer`, written to a temporary folder that is deleted once vLLM has
        loaded them; `dtype` defaults to the model's."""
        kwargs.setdefault("dtype", next(model.parameters()).dtype)
        with tempfile.TemporaryDirectory(prefix="hf_distill_vllm_") as folder:
            model.save_pretrained(folder, state_dict=state_dict)
            tokenizer.save_pretrained(folder)
            return cls(folder, folder, max_model_len=max_model_len, **kwargs)

    def generate(
        self,
        prompt_ids: list[list[int]],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        stop_token_ids: Sequence[int],
        seeds: list[int],
        generation_kwargs: dict[str, Any] | None = None,
    ) -> tuple[list[list[int]], list[bool]]:
        """Completions of `prompt_ids` (unpadded), one seed per row: the tokens up to and including the first stop
        token, and whether each was cut at `max_new_tokens` (or at the engine's `max_model_len`) without one."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if len(seeds) != len(prompt_ids):
            raise ValueError(f"{len(seeds)} seeds for {len(prompt_ids)} prompts: give one seed per prompt")
        params = [
            SamplingParams(
                **sampling_params_kwargs(
                    max_new_tokens, temperature, top_p, top_k, stop_token_ids, seed, generation_kwargs
                )
            )
            for seed in seeds
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        completions = [output.outputs[0] for output in outputs]
        return [list(c.token_ids) for c in completions], [c.finish_reason == "length" for c in completions]

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> float:
        """Copies `named_tensors` (transformers names, e.g. `model.state_dict().items()`) into the engine's model and
        drops the prefix cache built with the old weights; returns the seconds it took.

        `reload_weights` runs vLLM's own checkpoint loading (its renames, fused projections and, on CPU, the oneDNN
        repacking of every linear weight); `model.load_weights` on the engine's model, TRL's colocate path, stops
        after the embedding on CPU. Its keyword arguments are vLLM internals: this is the one call that uses them, and
        `tests/generation/test_vllm_engine.py` fails the day they change.
        """
        start = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(named_tensors)})
        self.llm.reset_prefix_cache()
        return time.perf_counter() - start

    def prompt_logprobs(self, prompt_ids: list[list[int]], k: int) -> list[list[dict[int, float]]]:
        """Per row of L tokens, for each position i < L - 1, the distribution that position i predicts (of token
        i + 1) as `{token id: log-prob}`: its top `k` tokens, and the actual token i + 1."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k, detokenize=False)
        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        # vLLM's first entry is None (nothing predicts the first token).
        return [
            [
                {token: logprob.logprob for token, logprob in position.items()}
                for position in output.prompt_logprobs[1:]
            ]
            for output in outputs
        ]
