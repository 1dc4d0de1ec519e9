"""Drop-in fidelity (issue 15): the chunked loss is never silently different from the model's own logits, PEFT
students, and every Trainer option either works or is refused."""

import logging
import math
import os
import re

import pytest
import torch
from test_trainer import make_args as trainer_args
from testing_utils import pad_collator, tiny_llama, tiny_sizes, variable_length_dataset
from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

from hf_distill import DistillConfig, DistillTrainer
from hf_distill.losses import (
    DivergenceSpec,
    TeacherHeads,
    TeacherLogits,
    dense_distillation_terms,
    fused_distillation_loss,
)
from hf_distill.models.hidden_states import final_hidden_states, fused_heads_reproduce_logits, lm_head

# Architecture -> config overrides that switch on its logit post-processing, so that the probe has something to see.
ARCHITECTURES = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {},
    "qwen3_moe": {},
    "gemma2": {"final_logit_softcapping": 3.0},
    "gemma3_text": {"final_logit_softcapping": 3.0},
    "cohere": {"logit_scale": 0.25},
    "granite": {"logits_scaling": 8.0},
    "granitemoe": {"logits_scaling": 8.0},
    # logits_scaling is hidden_size / dim_model_base; multi-head latent attention needs its own head sizes
    "minicpm3": dict(
        dim_model_base=256,
        num_key_value_heads=4,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        v_head_dim=8,
        kv_lora_rank=16,
        q_lora_rank=16,
    ),
    "hyperclovax": {"logits_scaling": 3.0},
    # Small Mamba-2 mixers: the default sizes make its reference scan (no mamba_ssm kernel) take seconds.
    "falcon_h1": dict(
        lm_head_multiplier=0.5,
        mamba_d_state=8,
        mamba_n_heads=4,
        mamba_d_head=8,
        mamba_d_ssm=32,
        mamba_n_groups=1,
        mamba_chunk_size=16,
    ),
    "phi3": {},
    "olmo2": {},
    "gpt2": {},
    "opt": {},
    "gpt_neox": {},
    "smollm3": {},
}


def tiny(model_type: str, seed: int) -> torch.nn.Module:
    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"transformers has no {model_type}")
    config = AutoConfig.for_model(model_type, **{**tiny_sizes(), **ARCHITECTURES[model_type]})
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


class ScaledLogitsLlama(LlamaForCausalLM):
    """An architecture whose forward post-processes its logits in a way no config field tells."""

    def forward(self, input_ids=None, attention_mask=None, labels=None, logits_to_keep=0, **kwargs):
        out = super().forward(
            input_ids=input_ids, attention_mask=attention_mask, labels=labels, logits_to_keep=logits_to_keep, **kwargs
        )
        out.logits = out.logits * 3.0
        return out


def scaled_logits_llama(seed: int) -> ScaledLogitsLlama:
    torch.manual_seed(seed)
    return ScaledLogitsLlama(tiny_llama(seed=seed).config)


def _identity(model):
    return model


def _loss_and_grads(student, teacher, batch, fused: bool):
    spec = DivergenceSpec(temperature=2.0, alpha=0.5)
    targets = batch["labels"][:, 1:]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    student.zero_grad()
    if fused:
        hidden = final_hidden_states(student, student, inputs)[:, :-1]
        with torch.no_grad():
            t_hidden = final_hidden_states(teacher, teacher, inputs)[:, :-1]
        source = TeacherHeads([t_hidden], [lm_head(teacher)])
        loss = fused_distillation_loss(hidden, lm_head(student), source, targets, spec, 5).loss
    else:
        with torch.no_grad():
            t_logits = teacher(**inputs).logits[:, :-1]
        loss = dense_distillation_terms(
            student(**inputs).logits[:, :-1], TeacherLogits([t_logits]), targets, spec
        ).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("role", ["student", "teacher"])
@pytest.mark.parametrize("model_type", list(ARCHITECTURES))
def test_architecture_matrix_fused_equals_dense(model_type, role):
    """Each architecture, as student and as teacher (beside a tiny Llama): the probe accepts its head, and the chunked
    loss equals the dense one from the model's own logits, in value and in the student's gradients."""
    model = tiny(model_type, seed=1)
    other = tiny_llama(seed=2, hidden=48).eval()
    student, teacher = (model, other) if role == "student" else (other, model)
    assert fused_heads_reproduce_logits([student, teacher], _identity)
    batch = pad_collator(list(variable_length_dataset(n=3)))
    dense, dense_grads = _loss_and_grads(student, teacher, batch, fused=False)
    fused, fused_grads = _loss_and_grads(student, teacher, batch, fused=True)
    torch.testing.assert_close(fused, dense, rtol=1e-5, atol=1e-5)
    assert fused_grads.keys() == dense_grads.keys()
    for name in dense_grads:
        torch.testing.assert_close(fused_grads[name], dense_grads[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("model_type", ["granite", "falcon_h1", "hyperclovax", "cohere"])
def test_probe_catches_a_missing_multiplier(model_type, caplog, monkeypatch):
    """Without the multiplier the probe sees the difference: it is what protects an architecture not yet known."""
    monkeypatch.setattr("hf_distill.models.hidden_states.logit_multiplier", lambda model, config: 1.0)
    model = tiny(model_type, seed=1)
    with caplog.at_level(logging.WARNING, logger="hf_distill.models.hidden_states"):
        assert not fused_heads_reproduce_logits([model], _identity)
    assert type(model).__name__ in caplog.text and "differs from its own logits by" in caplog.text


def make_args(tmp_path, **overrides):
    """test_trainer's arguments, with 4 examples per micro-batch."""
    return trainer_args(tmp_path, **{"per_device_train_batch_size": 4, **overrides})


def trained_weights(tmp_path, student, teacher, **overrides):
    trainer = DistillTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, **overrides),
        train_dataset=variable_length_dataset(),
        data_collator=pad_collator,
    )
    trainer.train()
    return trainer, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def assert_same_weights(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_granite_trains_fused_to_the_dense_weights(tmp_path, role):
    """Granite divides its logits by `logits_scaling`: the chunked path reproduces it (before, it trained on logits 8x
    too large and reached other weights)."""

    def run(name, chunk):
        granite, llama = tiny("granite", seed=1).train(), tiny_llama(seed=2, hidden=48)
        student, teacher = (granite, llama) if role == "student" else (tiny_llama(seed=1), granite)
        return trained_weights(tmp_path / name, student, teacher, loss_chunk_size=chunk)

    (dense, dense_weights), (fused, fused_weights) = run("dense", 0), run("fused", 5)
    assert fused.fused_loss and not dense.fused_loss
    assert_same_weights(dense_weights, fused_weights)


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_unknown_logit_post_processing_falls_back_to_dense(tmp_path, role, caplog):
    """A model whose forward scales its logits in a way no config says, with `loss_chunk_size` left unset (auto): one
    warning naming its class and the difference, and training takes the dense path, reaching the dense weights."""

    def run(name, chunk):
        scaled, llama = scaled_logits_llama(seed=1), tiny_llama(seed=2, hidden=48)
        student, teacher = (scaled, llama) if role == "student" else (tiny_llama(seed=1), scaled)
        return trained_weights(tmp_path / name, student, teacher, loss_chunk_size=chunk)

    dense, dense_weights = run("dense", 0)
    with caplog.at_level(logging.WARNING, logger="hf_distill.models.hidden_states"):
        auto, auto_weights = run("auto", None)
    warnings = [r.getMessage() for r in caplog.records if r.name == "hf_distill.models.hidden_states"]
    assert (
        len(warnings) == 1 and "ScaledLogitsLlama" in warnings[0] and "differs from its own logits by" in warnings[0]
    )
    assert not auto.fused_loss
    assert_same_weights(dense_weights, auto_weights, atol=0)


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_explicit_chunk_size_with_a_failed_probe_is_one_line_before_compute(tmp_path, role):
    """`loss_chunk_size` set by the user asks for the chunked loss: a model that cannot take it is an error naming its
    class and the difference, raised when the trainer is built (before, the same warning as auto and a dense run)."""
    scaled, llama = scaled_logits_llama(seed=1), tiny_llama(seed=2, hidden=48)
    student, teacher = (scaled, llama) if role == "student" else (tiny_llama(seed=1), scaled)
    message = (
        r"^the chunked loss cannot take ScaledLogitsLlama \(loss_chunk_size=5\): its LM head on the "
        r"final hidden states differs from its own logits by \d\.\d+(e[-+]\d+)? \(tolerance [^)]+\): .*; set "
        r"loss_chunk_size: 0 \(dense\), or leave it unset to fall back to the dense path with a warning$"
    )
    with pytest.raises(ValueError, match=message) as raised:
        DistillTrainer(
            model=student,
            teacher_model=teacher,
            args=make_args(tmp_path, loss_chunk_size=5),
            train_dataset=variable_length_dataset(),
            data_collator=pad_collator,
        )
    assert "\n" not in str(raised.value)


def test_explicit_and_auto_chunk_sizes_fuse_when_the_probe_passes(tmp_path):
    """Unset is auto (chunks of LOSS_CHUNK_SIZE); an explicit size is used as given; 0 is dense."""
    from hf_distill.losses import LOSS_CHUNK_SIZE

    sizes = {}
    for chunk in (None, 7, 0):
        trainer = DistillTrainer(
            model=tiny_llama(seed=1), teacher_model=tiny_llama(seed=2), args=make_args(tmp_path, loss_chunk_size=chunk)
        )
        sizes[chunk] = (trainer.fused_loss, trainer.args.effective_loss_chunk_size)
    assert sizes == {None: (True, LOSS_CHUNK_SIZE), 7: (True, 7), 0: (False, 0)}


def test_probe_restores_training_mode(tmp_path):
    student = tiny_llama(seed=1).train()
    teacher = tiny_llama(seed=2).eval()
    trainer = DistillTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_path), train_dataset=variable_length_dataset()
    )
    assert trainer.fused_loss and student.training and not teacher.training


# ---- PEFT students ----

LORA_CASES = {
    "decoder": dict(target_modules=["q_proj", "v_proj"]),
    "modules_to_save_head": dict(target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"]),
    "lora_head": dict(target_modules=["q_proj", "v_proj", "lm_head"]),
}


def lora_student(case: str, **overrides):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM", **LORA_CASES[case])
    for key, value in overrides.items():
        setattr(config, key, value)
    model = peft.get_peft_model(tiny_llama(seed=1), config)
    # LoRA's B starts at zero; a random one makes the adapters' contribution to the logits (and its errors) visible.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    return model


def trainable_weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}


@pytest.mark.parametrize("case", list(LORA_CASES))
def test_peft_student_runs_the_fused_loss_to_the_dense_weights(tmp_path, case, caplog):
    def run(name, chunk):
        trainer, _ = trained_weights(
            tmp_path / name, lora_student(case), tiny_llama(seed=2, hidden=48), loss_chunk_size=chunk
        )
        return trainer

    with caplog.at_level(logging.WARNING, logger="hf_distill.models.hidden_states"):
        dense, fused = run("dense", 0), run("fused", 5)
    assert fused.fused_loss, caplog.text
    a, b = trainable_weights(dense), trainable_weights(fused)
    assert any("lora_A" in k for k in a) and (case != "modules_to_save_head" or any("modules_to_save" in k for k in a))
    assert_same_weights(a, b)


def test_peft_head_with_dropout_falls_back_with_one_line(tmp_path, caplog):
    student = lora_student("lora_head", lora_dropout=0.1)
    with caplog.at_level(logging.WARNING, logger="hf_distill.models.hidden_states"):
        trainer = DistillTrainer(
            model=student,
            teacher_model=tiny_llama(seed=2),
            args=make_args(tmp_path),
            train_dataset=variable_length_dataset(),
        )
    assert not trainer.fused_loss
    assert "LlamaForCausalLM (in a PeftModelForCausalLM)" in caplog.text and "lora_dropout=0.1" in caplog.text


def _card(path):
    from huggingface_hub import ModelCard

    return ModelCard.load(os.path.join(path, "README.md"))


def test_peft_model_card_keeps_peft_metadata_and_the_distillation_section(tmp_path):
    student = lora_student("decoder")
    student.peft_config["default"].base_model_name_or_path = "org/base-model"
    trainer, _ = trained_weights(tmp_path, student, tiny_llama(seed=2), max_steps=1)
    trainer.save_model(str(tmp_path))
    trainer.create_model_card()
    card = _card(tmp_path)
    assert card.data.library_name == "peft" and card.data.base_model == "org/base-model"
    assert {"hf_distill", "distillation", "lora"} <= set(card.data.tags)
    assert "| Student base | `org/base-model` |" in card.text and "| Teacher | `LlamaForCausalLM` |" in card.text
    assert "- PEFT " in card.text


def test_create_model_card_takes_trainers_arguments(tmp_path):
    trainer, _ = trained_weights(tmp_path, tiny_llama(seed=1), tiny_llama(seed=2), max_steps=1)
    trainer.create_model_card(
        language="en",
        license="apache-2.0",
        tags=["mine"],
        model_name="my-student",
        finetuned_from="org/student-base",
        tasks="text-generation",
        dataset_tags="org/data",
        dataset="Org Data",
        dataset_args="default",
    )
    card = _card(tmp_path)
    assert card.data.language == "en" and card.data.license == "apache-2.0"
    assert card.data.tags == ["hf_distill", "distillation", "mine"] and card.data.base_model == "org/student-base"
    assert card.data.datasets == ["org/data"] and card.data.pipeline_tag == "text-generation"
    assert "# my-student" in card.text and "| Dataset | `Org Data` (default) |" in card.text
    with pytest.raises(ValueError, match=r"^tasks=\['a', 'b'\]: the model card has one pipeline_tag"):
        trainer.create_model_card(tasks=["a", "b"])


# ---- TrainingArguments that change the loss ----


@pytest.mark.parametrize("chunk", [0, 5])
def test_label_smoothing_is_applied_to_the_ce_like_labelsmoother(tmp_path, chunk):
    """`label_smoothing_factor` smooths the CE (dense and chunked); before, it was accepted and ignored. With alpha=1
    the logged loss of the first step is Trainer's `LabelSmoother` value on the initial student."""
    from transformers.trainer_pt_utils import LabelSmoother

    # One batch of the whole (4-example) data set: the first step's loss is on the initial weights.
    batch = pad_collator(list(variable_length_dataset(n=4)))
    with torch.no_grad():
        logits = tiny_llama(seed=1)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = LabelSmoother(epsilon=0.2)({"logits": logits}, batch["labels"], shift_labels=True)
    mask = batch["labels"][:, 1:] != -100
    by_torch = torch.nn.functional.cross_entropy(
        logits[:, :-1][mask], batch["labels"][:, 1:][mask], label_smoothing=0.2
    )
    torch.testing.assert_close(expected, by_torch, rtol=1e-5, atol=1e-6)

    def run(name, smoothing):
        trainer = DistillTrainer(
            model=tiny_llama(seed=1),
            args=make_args(tmp_path / name, alpha=1.0, label_smoothing_factor=smoothing, loss_chunk_size=chunk),
            train_dataset=variable_length_dataset(n=4),
            data_collator=pad_collator,
        )
        trainer.train()
        return trainer, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    (smoothed, smoothed_weights), (_, plain_weights) = run("smoothed", 0.2), run("plain", 0.0)
    first = next(h for h in smoothed.state.log_history if "loss" in h)
    assert first["loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert any(not torch.allclose(smoothed_weights[k], plain_weights[k]) for k in plain_weights)


def test_label_smoothing_out_of_range_is_refused():
    with pytest.raises(ValueError, match=r"^label_smoothing must be in \[0, 1\), got label_smoothing=1.0 \("):
        make_args("unused", label_smoothing_factor=1.0)


# ---- Trainer's methods ----


def test_predict_returns_logits_and_evaluate_stays_loss_only(tmp_path, monkeypatch):
    """Like plain Trainer: predict() without compute_metrics returns the logits (before, None), while evaluate()
    without compute_metrics gathers no logits (Trainer.evaluate asks for the loss only)."""
    data = variable_length_dataset(n=4)
    trainer = DistillTrainer(
        model=tiny_llama(seed=1),
        teacher_model=tiny_llama(seed=2),
        args=make_args(tmp_path, per_device_eval_batch_size=4),
        eval_dataset=data,
        data_collator=pad_collator,
    )
    output = trainer.predict(data)
    batch = pad_collator(list(data))
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(torch.as_tensor(output.predictions), logits, rtol=1e-5, atol=1e-5)
    assert (output.label_ids == batch["labels"].numpy()).all()
    assert {"test_loss", "test_ce_loss", "test_kd_loss"} <= output.metrics.keys()

    loss_only = []
    step = DistillTrainer.prediction_step

    def recording_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        loss_only.append(prediction_loss_only)
        return step(self, model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    monkeypatch.setattr(DistillTrainer, "prediction_step", recording_step)
    metrics = trainer.evaluate()
    assert loss_only == [True] and metrics["eval_loss"] == pytest.approx(output.metrics["test_loss"], rel=1e-6)


def test_hyperparameter_search_default_objective_is_the_eval_loss(tmp_path, monkeypatch):
    """Trainer's default objective sums every metric but `eval_loss`: with DistillTrainer's own metrics it summed CE,
    KD and teacher agreement. The default is now `eval_loss` (or, with compute_metrics, the sum of its metrics)."""
    from transformers import Trainer

    from hf_distill.metrics.names import distill_objective

    data = variable_length_dataset(n=4)
    trainer = DistillTrainer(
        model=tiny_llama(seed=1),
        teacher_model=tiny_llama(seed=2),
        args=make_args(tmp_path),
        eval_dataset=data,
        data_collator=pad_collator,
    )
    metrics = trainer.evaluate()
    assert {"eval_ce_loss", "eval_kd_loss", "eval_teacher_agreement", "eval_perplexity"} <= metrics.keys()
    assert distill_objective(metrics) == metrics["eval_loss"]
    assert distill_objective({**metrics, "eval_accuracy": 0.25}) == 0.25  # compute_metrics' metric, as for Trainer

    passed = {}
    monkeypatch.setattr(
        Trainer, "hyperparameter_search", lambda self, hp, objective, *a, **k: passed.update(f=objective)
    )
    trainer.hyperparameter_search(n_trials=1)
    assert passed["f"] is distill_objective
    mine = lambda m: 0.0  # noqa: E731
    trainer.hyperparameter_search(compute_objective=mine)
    assert passed["f"] is mine


def test_eval_perplexity_is_exp_of_the_eval_ce(tmp_path):
    data = variable_length_dataset(n=4)
    trainer = DistillTrainer(
        model=tiny_llama(seed=1),
        teacher_model=tiny_llama(seed=2),
        args=make_args(tmp_path, per_device_eval_batch_size=4),
        eval_dataset=data,
        data_collator=pad_collator,
    )
    metrics = trainer.evaluate()
    batch = pad_collator(list(data))
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["labels"][:, 1:] != -100
    ce = torch.nn.functional.cross_entropy(logits[:, :-1][mask], batch["labels"][:, 1:][mask])
    assert metrics["eval_perplexity"] == pytest.approx(ce.exp().item(), rel=1e-5)
    assert metrics["eval_perplexity"] != pytest.approx(torch.tensor(metrics["eval_loss"]).exp().item(), rel=1e-3)


@pytest.mark.parametrize("ensemble", [False, True])
def test_teacher_context_shorter_than_the_batch_is_one_line_before_compute(tmp_path, ensemble):
    """Before: an IndexError from inside GPT-2's position embedding. Now one line naming the teacher and both
    lengths, raised before any forward pass, in training and in evaluation."""
    short = tiny("gpt2", seed=3)
    short.config.name_or_path = "org/short-teacher"
    short.config.n_positions = 8
    teacher = [tiny_llama(seed=2), short] if ensemble else short
    student = tiny_llama(seed=1)
    forwards = []
    student.register_forward_pre_hook(lambda *a: forwards.append(1))
    trainer = DistillTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path),
        train_dataset=variable_length_dataset(),
        eval_dataset=variable_length_dataset(n=4),
        data_collator=pad_collator,
    )
    name = "1 (org/short-teacher)" if ensemble else "org/short-teacher"
    message = "^" + re.escape(
        f"batch longer than the teacher's context (teacher {name}, max_position_embeddings=8): the teacher reads at "
        "most 8 positions, but a batch has "
    )
    forwards.clear()  # the build-time probe of the heads
    with pytest.raises(ValueError, match=message + r"\d+; set max_length <= 8 \(or truncate the data\)$"):
        trainer.train()
    with pytest.raises(ValueError, match="max_position_embeddings=8\\): the teacher reads at most 8"):
        trainer.evaluate()
    assert forwards == []


def test_teacher_context_of_a_packed_row_is_its_longest_sequence(tmp_path):
    """A padding-free row (TRL's packing) holds sequences whose positions restart at 0: the teacher reads positions
    up to the longest one, so a row longer than its context is accepted, and a sequence longer than it is not."""
    short = tiny("gpt2", seed=3)
    short.config.n_positions = 8
    trainer = DistillTrainer(model=tiny_llama(seed=1), teacher_model=short, args=make_args(tmp_path))
    ids = torch.arange(3, 15)[None]
    trainer._prepare_inputs({"input_ids": ids, "position_ids": torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]])})
    with pytest.raises(ValueError, match=r"the teacher reads at most 8 positions, but a batch has 9;"):
        trainer._prepare_inputs(
            {"input_ids": ids, "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 7, 8]])}
        )
    with pytest.raises(ValueError, match=r"the teacher reads at most 8 positions, but a batch has 12;"):
        trainer._prepare_inputs({"input_ids": ids})


def test_other_label_names_are_refused(tmp_path):
    """Before: accepted, then a KeyError 'labels' from inside compute_loss at the first step."""
    with pytest.raises(ValueError, match=r"^label_names other than labels \(label_names=\['target'\]\): "):
        DistillTrainer(model=tiny_llama(seed=1), args=make_args(tmp_path, alpha=1.0, label_names=["target"]))
    trainer = DistillTrainer(model=tiny_llama(seed=1), args=make_args(tmp_path, alpha=1.0, label_names=["labels"]))
    assert trainer.teacher.kind == "none" and trainer.teacher_model is None


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "cohere", "granite", "minicpm3", "falcon_h1"])
def test_probe_accepts_bfloat16_models(model_type):
    """In bfloat16 the probe compares in the model's dtype with that dtype's tolerance: no false dense fallback."""
    assert fused_heads_reproduce_logits([tiny(model_type, seed=1).to(torch.bfloat16)], _identity)


def test_per_device_token_average_is_refused_under_several_processes(tmp_path, monkeypatch):
    """Trainer's per-process token average would be silently replaced by the global one: refused where it differs
    (several processes), accepted with one process, where both are the same."""
    args = make_args(tmp_path, alpha=1.0, average_tokens_across_devices=False)
    DistillTrainer(model=tiny_llama(seed=1), args=args)
    monkeypatch.setattr(DistillConfig, "world_size", property(lambda self: 2))
    with pytest.raises(ValueError, match=r"^per-process token average \(average_tokens_across_devices=False\): "):
        DistillTrainer(model=tiny_llama(seed=1), args=args)


# ---- scripts written for Trainer ----


def test_run_clm_with_the_three_line_swap(tmp_path, monkeypatch):
    """run_clm.py's flow (grouped blocks, default_data_collator, labels = input_ids) distils on the demo models; its
    `exp(eval_loss)` is not the perplexity, `eval_perplexity` is, and it is exp(eval_ce_loss)."""
    import run_clm_distill

    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    metrics = run_clm_distill.main(str(tmp_path / "out"), max_steps=2)
    assert metrics["train_loss"] > 0 and {"eval_loss", "eval_ce_loss", "eval_kd_loss"} <= metrics.keys()
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_ce_loss"]), rel=1e-9)
    assert metrics["perplexity"] != pytest.approx(metrics["eval_perplexity"], rel=1e-3)


def test_unreadable_models_fall_back_with_one_line(caplog):
    """Models the chunked loss cannot read are named, with the reason, instead of silently losing the memory saving."""

    class NoKeep(LlamaForCausalLM):
        def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    quantized = tiny_llama(seed=1)
    quantized.lm_head.weight = torch.nn.Parameter(quantized.lm_head.weight.to(torch.int8), requires_grad=False)
    cases = {
        NoKeep(tiny_llama(seed=1).config): "NoKeep.forward takes no logits_to_keep",
        quantized: "its LM head weight is torch.int8 (quantized)",
    }
    for model, reason in cases.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hf_distill.models.hidden_states"):
            assert not fused_heads_reproduce_logits([model], _identity)
        assert len(caplog.records) == 1 and reason in caplog.text and type(model).__name__ in caplog.text
