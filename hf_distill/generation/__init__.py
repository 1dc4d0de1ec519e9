"""Everything that generates text: which optimizer steps generate and the batches they train on (`step_generator`:
on-policy `lmbda`, sequence-level `seq_kd`), greedy decoding for evaluation (`greedy`) and the answer metrics of
`eval_generate` (`eval_answers`). A second generation engine lives here beside the `hf` one."""

# The public names of the module of earlier versions, `hf_distill.generation`.
from .step_generator import (
    Completions,
    GeneratedStep,
    StepGenerator,
    completion_batch,
    completion_rows,
    generate,
    generation_seed,
    prompts,
    step_writer,
)

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
