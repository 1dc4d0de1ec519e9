"""`DistillConfig`: `transformers.TrainingArguments` plus the distillation knobs."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import GenerationConfig, TrainingArguments

from .arguments.field_docs import document_fields
from .arguments.field_rules import ReadWhen, check_declared_fields, collect_rules
from .arguments.generation_kwargs import parse_generation_kwargs
from .arguments.teacher_server import TeacherServerArguments
from .arguments.training_checks import check_distillation_settings, check_step_intervals, check_training_arguments
from .generation.engine_config import GenerationEngineArguments, check_generation_engine
from .losses import (
    CROSS_TOKENIZER_MODES,
    ENSEMBLE_MODES,
    LOSS_CHUNK_SIZE,
    LOSS_TYPES,
    SPARSE_MODES,
    DivergenceSpec,
    check_ensemble_mode,
)
from .losses.divergences import BETA_LOSS_TYPES, DEFAULT_BETA
from .user_errors import bad_value

TEACHER_SOURCES = ("none", "model", "cache", "server")


def normalized_weights(weights: Sequence[float] | None, n_teachers: int) -> list[float]:
    """`weights` scaled to sum to 1 (uniform when None); errors name the `teacher_weights` field."""
    if weights is None:
        return [1.0 / n_teachers] * n_teachers
    weights = list(weights)
    if len(weights) != n_teachers:
        raise bad_value(
            "teacher_weights",
            weights,
            f"{len(weights)} entries for {n_teachers} teachers",
            "give one weight a teacher",
        )
    if any(not w >= 0 for w in weights) or not sum(weights) > 0:
        raise bad_value("teacher_weights", weights, "must be >= 0 with a positive sum", "fix the weights")
    total = sum(weights)
    return [w / total for w in weights]


@document_fields
@collect_rules
@dataclass
class DistillConfig(TeacherServerArguments, GenerationEngineArguments, TrainingArguments):
    r"""
    Arguments of [`DistillTrainer`]: every field of `transformers.TrainingArguments`, plus the ones below, the
    generation engine's (`hf_distill.generation.engine_config.GenerationEngineArguments`: `use_vllm`, ...) and those of
    a teacher behind a server (`hf_distill.arguments.teacher_server.TeacherServerArguments`).

    The training loss is `alpha * CE + (1 - alpha) * temperature**2 * D(teacher || student)`, both terms summed over
    valid tokens (labels != -100) and divided by the number of valid tokens of the whole optimizer step.

    Parameters:
        > Parameters that control the teacher

        teacher_model_name_or_path (`str` or `list[str]`, *optional*, defaults to `None`):
            Hub id or local folder of the teacher, loaded with `AutoModelForCausalLM.from_pretrained` when the trainer
            is not given a `teacher_model`. Not needed when `alpha=1.0`. A list is an ensemble of teachers (see
            `teacher_ensemble`); its members must share the vocabulary, up to embedding padding.
        teacher_ensemble (`str`, *optional*, defaults to `"mean_probs"`):
            How an ensemble's members are combined, position by position, after each is softened by `temperature`:
            `mean_probs` the weighted mean of their probabilities, or `mean_logprobs` the weighted mean of their
            log-probabilities renormalised (a geometric mean). Unused with one teacher.
        teacher_weights (`list[float]`, *optional*, defaults to `None`):
            Weight of each ensemble member, one per teacher, >= 0 with a positive sum, normalised to sum to 1 (`[2,
            1]` is `[2/3, 1/3]`); members of weight 0 are not run. `None` weighs them equally.
        teacher_model_init_kwargs (`dict` or `str`, *optional*, defaults to `None`):
            Keyword arguments for loading the teacher, e.g. `{"dtype": "bfloat16"}`, or the same as a JSON string (on
            the command line). `None` passes none.
        teacher_cache_dir (`str`, *optional*, defaults to `None`):
            Folder written by `hf-distill cache-teacher`: the teacher's top-k log-probabilities of every target token
            of the train split. Training then loads and runs no teacher; the cache's manifest must match the recipe
            (teacher or ensemble, tokenizer vocabulary, tokenized train split, `max_length`), else training stops
            before it starts with an error naming the field. The cached top-k runs through the chunked loss like a
            live teacher (`loss_chunk_size`). An ensemble is cached as its combination at temperature 1, which
            training then softens by `temperature` (a live ensemble combines the softened members instead; the two
            agree at `temperature=1`). Evaluation, which has no cache, reports the CE only.
        teacher_cache_mode (`str`, *optional*, defaults to `"renormalized"`):
            How a cached top-k, or a server's (`use_teacher_server`), becomes a distribution (read with one of the
            two only; `hf_distill.losses.sparse_distillation_loss`):
            `renormalized` compares teacher and student restricted to the teacher's top-k tokens, both renormalised;
            `tail_bucket` adds one bucket holding all other tokens' mass; `teacher_renormalized` renormalises the
            teacher's top-k only and compares it with the student's full-vocabulary log-probabilities at those tokens
            (DistillKit's objective, and axolotl's without `kd_normalize_topk`; `loss_type: forward_kl` only).

        > Parameters that control the loss

        alpha (`float`, *optional*, defaults to `0.5`):
            Weight of the cross-entropy term, in [0, 1]. `1.0` is plain fine-tuning: no teacher is loaded or run.
            `0.0` trains on the divergence alone.
        temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature of both distributions in the divergence, > 0. The divergence is multiplied by
            `temperature**2` so that its gradients keep their scale as the temperature changes.
        loss_type (`str`, *optional*, defaults to `"forward_kl"`):
            Divergence: `forward_kl` KL(teacher || student), `reverse_kl` KL(student || teacher), `jsd` generalised
            Jensen-Shannon weighted by `beta`, `gjsd` the same with TRL's endpoints (`beta` 0 is forward KL, 1 reverse
            KL: TRL's `generalized_jsd_loss`), `skew_forward_kl` / `skew_reverse_kl` (DistiLLM) skewed by
            `skew_lambda`, or `tvd` total variation distance.
        beta (`float`, *optional*, defaults to `0.5`):
            Teacher weight of the mixture in `jsd`, in (0, 1), and in `gjsd`, in [0, 1]. Read by those two only: with
            another `loss_type` a `beta` other than 0.5 is refused, since it would be ignored (a TRL user's `beta: 1.0`
            asks for reverse KL: `loss_type: gjsd` or `reverse_kl`).
        skew_lambda (`float`, *optional*, defaults to `0.1`):
            Skew of the `skew_*` divergences, in [0, 1); 0 gives the plain KL.

        > Parameters that control a teacher with another tokenizer

        teacher_tokenizer_name_or_path (`str`, *optional*, defaults to `None`):
            Hub id or local folder of the teacher's own tokenizer, read with `cross_tokenizer` only. `None` takes the
            tokenizer in the teacher's folder.
        cross_tokenizer (`str`, *optional*, defaults to `"off"`):
            Distillation from a teacher with another tokenizer. `off`: teacher and student must share one vocabulary
            (a mismatch is an error before any weight loads). Otherwise every example is also rendered and tokenized
            for the teacher (its own chat template for `messages` data), both fast tokenizers' character offsets
            align the tokens into spans (the shortest runs of student and teacher tokens covering the same
            characters), and the divergence is computed once per span, between both models' next-token
            distributions at the span's first token (both then read the same text; later tokens of a span are split
            differently on the two sides): `uld` the Universal Logit Distillation loss (Boizard et al. 2024: the L1
            distance between both distributions' probabilities sorted in decreasing order, the shorter padded with
            zeros; `loss_type` is not read), `aligned` the `loss_type` divergence between both distributions
            restricted to the tokens the vocabularies share (same text decoded by each tokenizer alone; renormalised
            there) plus `cross_tokenizer_uld_weight` times the ULD of the probabilities of all other tokens. Both are
            softened by `temperature` and times `temperature**2`, summed over spans and divided by the step's
            student target tokens, like the same-vocabulary divergence; target tokens in no aligned span (the
            training log counts them) get the CE only. With one tokenizer on both sides, `aligned` is the
            same-vocabulary divergence. Needs one live teacher (no ensemble, no `teacher_cache_dir`) and no
            generation (`lmbda: 0`, no `seq_kd`); the loss is dense (`loss_chunk_size` does not apply).
        cross_tokenizer_uld_weight (`float`, *optional*, defaults to `1.0`):
            Weight, >= 0, of the ULD of the tokens the vocabularies do not share in `cross_tokenizer: aligned`; `0`
            compares the shared tokens only. Read by `aligned` only.

        > Parameters that control generation (on-policy GKD and sequence-level KD)

        lmbda (`float`, *optional*, defaults to `0.0`):
            Probability, in [0, 1], that an optimizer step is on-policy (GKD): the student samples completions of
            the step's prompts and learns from the teacher's distributions at every sampled token, with the divergence
            alone (a CE on its own samples would reinforce its mistakes). Drawn once per optimizer step, the same on
            every process, from `seed` and the step number. `0.0` is off-policy distillation only; with `1.0` every
            step is on-policy and a prompt-only dataset is accepted. Needs a live teacher (no `teacher_cache_dir`).
        seq_kd (`bool`, *optional*, defaults to `False`):
            Sequence-level KD on the steps that are not on-policy: the teacher generates the completions, and the
            student learns on them with the whole loss, the CE on the teacher's tokens weighted by `alpha` included.
            Needs one live teacher (not an ensemble).
        max_new_tokens (`int`, *optional*, defaults to `128`):
            Longest generated completion, in tokens, >= 1; a completion that reaches it without an end-of-sequence
            token is cut there and counted in `truncated_fraction`.
        generation_temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature of the generated completions, >= 0, apart from the loss's `temperature`; `0.0` decodes
            greedily.
        generation_top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus sampling: sample among the most likely tokens whose probabilities add up to this, in (0, 1].
        generation_top_k (`int`, *optional*, defaults to `0`):
            Sample among the k most likely tokens only, >= 0; `0` turns it off.
        generation_kwargs (`dict` or `str`, *optional*, defaults to `None`):
            Further `transformers.GenerationConfig` fields, e.g. `{"repetition_penalty": 1.1}`, or the same as a
            JSON string (on the command line). Fields with their own setting here, and unknown fields, are refused.
        log_completions (`bool`, *optional*, defaults to `False`):
            On the logged steps (every `logging_steps`) that generate, append each sequence's prompt, completion, its
            per-token KD and whether it was cut to `output_dir/completions.csv`, from the main process. Rows past a
            checkpoint are dropped when training resumes from it, as in `metrics.csv`.

        > Parameters that control the fused loss and numerics

        loss_chunk_size (`int`, *optional*, defaults to `None`):
            Training computes CE and the divergence from the final hidden states, this many target tokens at a time,
            recomputing nothing in backward: the `(tokens x vocabulary)` logits of student and teacher never exist in
            full. When the trainer is built, each model's LM head on its final hidden states is checked against its own
            logits on a few tokens. `None` (auto) chunks 256 tokens at a time when every model passes that check, and
            otherwise takes the dense path with one warning naming the model class and the difference; a value > 0
            chunks that many, and a model that fails the check is then an error naming its class and the difference
            (set `0` or leave it unset). Values are >= 0: `0` uses the dense path (full logits, as the model returns
            them). 256 keeps a chunk's buffers near 1.3 GB at a 128k vocabulary (peak about ten float32 `(chunk,
            vocab)` buffers) while the matmuls stay large; `benchmarks/loss_memory.py` measured it at 0.06-0.17x the
            dense memory and 0.3-0.6x its time on CPU (float32). Besides the chunk buffers it holds a float32 gradient
            of the student's head and, for bf16/fp16 heads, float32 copies of both heads (for a 128k x 4096 head, 2 GB
            each). Evaluation is always dense (it needs per-example values), and so is training under DeepSpeed ZeRO-3
            and with `track_samples` holding `train`. A teacher ensemble runs chunked too: each member is kept to
            hidden states and their softened distributions are combined chunk by chunk.
        max_nonfinite_steps (`int`, *optional*, defaults to `3`):
            An optimizer step whose gradients hold NaN or inf is skipped (no weight changes); after this many
            consecutive skipped steps training stops with an error naming the step and its example ids; >= 0, `0` stops
            at the first. Not enforced under DeepSpeed, which owns the gradients and steps inside backward (a warning
            says so when the trainer is built; DeepSpeed ZeRO-3 skips a step whose gradient norm is not finite itself,
            in any precision, without counting it).

        > Parameters that control evaluation and logging

        early_stop_patience (`int`, *optional*, defaults to `None`):
            Stop after this many evaluations, >= 1, without an improvement of `eval_loss` larger than
            `early_stop_min_delta`. `None` turns early stopping off. Needs an eval dataset and an `eval_strategy`.
        early_stop_min_delta (`float`, *optional*, defaults to `0.0`):
            Smallest decrease of `eval_loss` that counts as an improvement for early stopping, >= 0.
        track_samples (`list[str]`, *optional*, defaults to `["eval"]`):
            When to write per-example CE, KD and teacher agreement to `output_dir/samples.csv`: any of `eval` and
            `train` (every training micro-batch; costs a gather per micro-batch across processes), or `[]` for never.
            Examples are named by the dataset's `id` column (brought to the batches by `DistillDataCollator`), else,
            in evaluation, by their index; `train` needs the ids (shuffled batches have no meaningful index), and so
            does `eval` under `train_sampling_strategy: group_by_length`, which reorders the evaluation batches too.
        metrics_csv (`bool`, *optional*, defaults to `True`):
            Append every training and evaluation log (losses, learning rate, gradient norm, target tokens per second,
            elapsed seconds) to `output_dir/metrics.csv`, from a background thread of the main process. A run resumed
            from checkpoint-N first drops the rows past step N from `metrics.csv` and `samples.csv`, so each step
            appears once. `hf-distill report` plots the file.
        eval_generate (`bool`, *optional*, defaults to `False`):
            Each evaluation also completes every eval prompt greedily (up to `eval_max_new_tokens` tokens) and
            reports `eval_exact_match` and `eval_token_f1` of the answers against the references (the normalisation
            of `hf-distill evaluate`), in the logs, `metrics.csv` and `hf-distill report`. Off by default: generation
            is slow. Needs the tokenizer as `processing_class`.
        eval_max_new_tokens (`int`, *optional*, defaults to `32`):
            Longest answer generated by `eval_generate`, >= 1.
        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            `hf-distill train` deletes what `output_dir` holds (an earlier run: checkpoints, model, logs) and starts
            anew. Without it, the run's arguments that shape the weights are recorded in
            `output_dir/run_arguments.json` when it starts: a rerun with other such arguments is refused with the
            fields that changed, one with the same arguments resumes from the last complete checkpoint, and a
            finished one is left as it is.
    """

    # A field's bounds (`range`), allowed values (`choices`, `subset_of`) and when it is read (`read_when`) are
    # declared in its metadata and checked by one walker (hf_distill.arguments.field_rules); the rules between fields
    # are written out in hf_distill.arguments.training_checks.check_distillation_settings.

    # `list[str] | str`, in this order: HfArgumentParser then parses a command-line value as one str, and the recipe
    # passes a YAML list through as is.
    teacher_model_name_or_path: list[str] | str | None = None
    teacher_ensemble: str = field(default="mean_probs", metadata={"choices": list(ENSEMBLE_MODES)})
    teacher_weights: list[float] | None = None
    teacher_model_init_kwargs: dict[str, Any] | str | None = None
    teacher_cache_dir: str | None = None
    teacher_cache_mode: str = field(
        default="renormalized",
        metadata={
            "choices": list(SPARSE_MODES),
            "read_when": ReadWhen(
                lambda config: config.teacher_source in ("cache", "server"),
                "teacher_cache_dir or use_teacher_server: true",
                {"teacher_cache_dir": "cache"},
                why="it is read with a teacher's top-k only (teacher_cache_dir or use_teacher_server)",
            ),
        },
    )

    alpha: float = field(default=0.5, metadata={"range": "[0, 1]"})
    temperature: float = field(default=1.0, metadata={"range": "(0, inf)"})
    loss_type: str = field(
        default="forward_kl",
        metadata={
            "choices": list(LOSS_TYPES),
            "read_when": ReadWhen(
                lambda config: config.cross_tokenizer != "uld",
                "cross_tokenizer: aligned, which compares the shared tokens with loss_type",
                {"cross_tokenizer": "aligned"},
                why="ULD is its own distance and reads no loss_type",
            ),
        },
    )
    beta: float = field(
        default=DEFAULT_BETA,
        metadata={
            "range": "[0, 1]",
            "read_when": ReadWhen(
                lambda config: config.loss_type in BETA_LOSS_TYPES,
                "loss_type: gjsd (TRL's beta: 0 is forward KL, 1 reverse KL)",
                {"loss_type": "gjsd"},
                why="beta is read by loss_type 'jsd' and 'gjsd' only, and loss_type={loss_type!r} would ignore it",
            ),
        },
    )
    skew_lambda: float = field(default=0.1, metadata={"range": "[0, 1)"})

    teacher_tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={
            "read_when": ReadWhen(
                lambda config: config.cross_tokenizer != "off",
                "cross_tokenizer: uld or aligned",
                {"cross_tokenizer": "uld"},
                why="it is read with cross_tokenizer 'uld' or 'aligned' only, and cross_tokenizer is 'off'",
            )
        },
    )
    cross_tokenizer: str = field(default="off", metadata={"choices": list(CROSS_TOKENIZER_MODES)})
    cross_tokenizer_uld_weight: float = field(
        default=1.0,
        metadata={
            "range": "[0, inf)",
            "read_when": ReadWhen(
                lambda config: config.cross_tokenizer == "aligned",
                "cross_tokenizer: aligned",
                {"cross_tokenizer": "aligned"},
                why="it is read by cross_tokenizer 'aligned' only, and cross_tokenizer is {cross_tokenizer!r}",
            ),
        },
    )

    lmbda: float = field(
        default=0.0, metadata={"range": "[0, 1]", "range_fix": "set a share of on-policy steps in [0, 1]"}
    )
    seq_kd: bool = False
    max_new_tokens: int = field(default=128, metadata={"range": "[1, inf)"})
    generation_temperature: float = field(
        default=1.0, metadata={"range": "[0, inf)", "range_fix": "set it to 0 (greedy) or more"}
    )
    generation_top_p: float = field(default=1.0, metadata={"range": "(0, 1]"})
    generation_top_k: int = field(default=0, metadata={"range": "[0, inf)", "range_fix": "set it to 0 (off) or more"})
    generation_kwargs: dict[str, Any] | str | None = None
    log_completions: bool = False

    loss_chunk_size: int | None = field(
        default=None, metadata={"range": "[0, inf)", "range_fix": "set it to 0 (dense) or a chunk size in tokens"}
    )
    max_nonfinite_steps: int = field(default=3, metadata={"range": "[0, inf)"})

    early_stop_patience: int | None = field(default=None, metadata={"range": "[1, inf)"})
    early_stop_min_delta: float = field(default=0.0, metadata={"range": "[0, inf)"})
    track_samples: list[str] = field(default_factory=lambda: ["eval"], metadata={"subset_of": ["eval", "train"]})
    metrics_csv: bool = True
    eval_generate: bool = False
    eval_max_new_tokens: int = field(default=32, metadata={"range": "[1, inf)"})
    overwrite_output_dir: bool = False

    def __post_init__(self):
        # The loss functions' own checks first: their messages (`alpha must be in [0, 1], got alpha=1.5`) are the ones
        # users and docs/errors.md know. Then each field's declared rules, then the rules between fields.
        check_ensemble_mode(self.teacher_ensemble)
        self.divergence_spec  # noqa: B018 (built to validate: alpha, temperature, loss_type, beta, skew_lambda)
        check_declared_fields(self)
        generation_kwargs = parse_generation_kwargs(self.generation_kwargs)
        check_distillation_settings(self)
        check_generation_engine(self, generation_kwargs)
        if self.early_stop_patience is not None and self.metric_for_best_model is None:
            # EarlyStoppingCallback reads `metric_for_best_model`; early stopping is defined on eval_loss.
            self.metric_for_best_model = "loss"
        check_step_intervals(self)
        super().__post_init__()
        check_training_arguments(self)

    # What follows from the fields is decided here and read everywhere else. Properties, not attributes set once:
    # a script that changes a field after construction must not read a stale decision.

    @property
    def teacher_source(self) -> str:
        """Where the teacher comes from: `none` (alpha == 1, no teacher), `server` (`use_teacher_server`), `cache`
        (`teacher_cache_dir`) or `model` (teacher models, from `teacher_model_name_or_path` or passed to the
        trainer)."""
        if self.alpha == 1.0:
            return "none"
        if self.use_teacher_server:
            return "server"
        return "cache" if self.teacher_cache_dir is not None else "model"

    @property
    def uses_teacher_cache(self) -> bool:
        """Whether training reads the teacher from `teacher_cache_dir` instead of running one (only when alpha < 1)."""
        return self.teacher_source == "cache"

    @property
    def effective_loss_chunk_size(self) -> int:
        """Target tokens per chunk of the fused loss: `loss_chunk_size`, or `LOSS_CHUNK_SIZE` when it is None (auto);
        0 is the dense path."""
        return LOSS_CHUNK_SIZE if self.loss_chunk_size is None else self.loss_chunk_size

    @property
    def uses_cross_tokenizer(self) -> bool:
        """Whether a live teacher with its own tokenizer is compared span by span (`cross_tokenizer` not `off`)."""
        return self.cross_tokenizer != "off" and self.teacher_source == "model"

    @property
    def divergence_spec(self) -> DivergenceSpec:
        """The loss options as the loss functions take them: `loss_type`, `temperature`, `beta`, `skew_lambda`,
        `alpha`, and Trainer's `label_smoothing_factor` for the CE (checked on construction, with errors naming the
        field)."""
        return DivergenceSpec(
            self.loss_type, self.temperature, self.beta, self.skew_lambda, self.alpha, self.label_smoothing_factor
        )

    @property
    def generates(self) -> bool:
        """Whether some optimizer steps train on generated completions (`lmbda > 0` or `seq_kd`)."""
        return self.lmbda > 0 or self.seq_kd

    @property
    def generation_setting(self) -> str:
        """The field that makes the run generate, as error messages name it: `lmbda=...`, else `seq_kd=True`."""
        return f"lmbda={self.lmbda}" if self.lmbda > 0 else "seq_kd=True"

    @property
    def generation_config(self) -> GenerationConfig:
        """The sampling settings as a `transformers.GenerationConfig` (token ids are the tokenizer's, added later)."""
        sampling = {"do_sample": False}
        if self.generation_temperature > 0:
            sampling = dict(do_sample=True, temperature=self.generation_temperature, top_p=self.generation_top_p)
            # 0 is "no top-k", said explicitly: None would let transformers fill in its default, top-50.
            sampling["top_k"] = self.generation_top_k
        extra = parse_generation_kwargs(self.generation_kwargs)
        return GenerationConfig(max_new_tokens=self.max_new_tokens, **sampling, **extra)

    @property
    def teacher_paths(self) -> list[str]:
        """`teacher_model_name_or_path` as a list: one path, an ensemble's paths, or none."""
        teachers = self.teacher_model_name_or_path
        if teachers is None:
            return []
        return [teachers] if isinstance(teachers, str) else list(teachers)

    def ensemble_weights(self, n_teachers: int | None = None) -> list[float]:
        """`teacher_weights` normalised to sum to 1, for `n_teachers` members (default: the configured paths)."""
        return normalized_weights(self.teacher_weights, len(self.teacher_paths) if n_teachers is None else n_teachers)
