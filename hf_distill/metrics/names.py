"""The names of the metrics a run logs, defined once for the trainer, the CSV files, the model card and the report."""

from transformers.trainer_utils import default_compute_objective

# Per-example sums over target tokens that the trainer accumulates: CE, KD, top-1 matches with the teacher, and the
# number of target tokens that turns the others into per-token means. Also the order of its evaluation sums.
TERMS = ("ce", "kd", "agree", "tokens")

LOSS = "loss"
CE_LOSS = "ce_loss"
KD_LOSS = "kd_loss"
TEACHER_AGREEMENT = "teacher_agreement"
# exp of the evaluation's CE: what `run_clm.py`'s `exp(eval_loss)` means for plain fine-tuning.
PERPLEXITY = "perplexity"

# The logged per-token mean of each term but `tokens`, in the order of TERMS.
PER_TOKEN = {"ce": CE_LOSS, "kd": KD_LOSS, "agree": TEACHER_AGREEMENT}

EVAL_PREFIX = "eval"


def prefixed(name: str, prefix: str = EVAL_PREFIX) -> str:
    """The name Trainer gives metric `name` of an evaluation run with `metric_key_prefix=prefix`."""
    return f"{prefix}_{name}"


# What a training log adds up, and what an evaluation reports (in this order in metrics.csv and the report).
TRAIN_LOSSES = (LOSS, CE_LOSS, KD_LOSS)
EVAL_METRICS = tuple(prefixed(name) for name in (*TRAIN_LOSSES, TEACHER_AGREEMENT))

# What an evaluation with `eval_generate` adds: the greedy answers' exact match and token F1 with the references.
EXACT_MATCH = "exact_match"
TOKEN_F1 = "token_f1"
GENERATED_EVAL_METRICS = tuple(prefixed(name) for name in (EXACT_MATCH, TOKEN_F1))

# What an evaluation reports beside `eval_loss`: never part of a hyperparameter search's default objective.
EVAL_EXTRAS = (
    *(prefixed(name) for name in (CE_LOSS, KD_LOSS, TEACHER_AGREEMENT, PERPLEXITY)),
    *GENERATED_EVAL_METRICS,
)

# What a training log of a run that generates adds (`lmbda > 0` or `seq_kd`): the mean length of the generated
# completions in tokens, the fraction cut at `max_new_tokens`, the fraction of optimizer steps that were on-policy,
# and the teacher's mean log-probability of the generated tokens.
COMPLETION_LENGTH = "completion_length"
TRUNCATED_FRACTION = "truncated_fraction"
ON_POLICY_FRACTION = "on_policy_fraction"
TEACHER_LOGPROB = "teacher_logprob"
# With `use_vllm`: the mean seconds of the window's syncs of the student's weights into its vLLM engine.
VLLM_SYNC_SECONDS = "vllm_sync_seconds"
GENERATION_METRICS = (COMPLETION_LENGTH, TRUNCATED_FRACTION, ON_POLICY_FRACTION, TEACHER_LOGPROB, VLLM_SYNC_SECONDS)


def distill_objective(metrics: dict[str, float]) -> float:
    """`DistillTrainer.hyperparameter_search`'s default objective: Trainer's `default_compute_objective` without the
    metrics DistillTrainer adds (`EVAL_EXTRAS`) and the timing Trainer adds at the first evaluation
    (`eval_model_preparation_time`), which it would add to the objective or return instead of the loss."""
    kept = {k: v for k, v in metrics.items() if k not in EVAL_EXTRAS and not k.endswith("_model_preparation_time")}
    return default_compute_objective(kept)
