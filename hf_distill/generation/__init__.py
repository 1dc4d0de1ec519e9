"""Everything that generates text: which optimizer steps generate and the batches they train on (`step_generator`:
on-policy `lmbda`, sequence-level `seq_kd`), the generation backend resolved once per run (`backends`: transformers'
`generate` in `hf_generate`, vLLM in `vllm_backend` and `vllm_engine`, its fields in `engine_config`), the seeds of
generated requests (`seeds`), greedy decoding for evaluation (`greedy`) and the answer metrics of `eval_generate`
(`eval_answers`)."""

# The public names of the module of earlier versions, `hf_distill.generation`.
from .hf_generate import Completions, generate
from .seeds import generation_seed
from .step_generator import GeneratedStep, StepGenerator, completion_batch, completion_rows, prompts, step_writer

__all__ = [
    "Completions",
    "GeneratedStep",
    "StepGenerator",
    "completion_batch",
    "completion_rows",
    "generate",
    "generation_seed",
    "prompts",
    "step_writer",
]
