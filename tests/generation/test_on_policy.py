"""On-policy (GKD) and sequence-level distillation: generated completions, their loss against an independent
computation, batch-split and resume invariance, and the refusals."""

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from testing_utils import tiny_llama, variable_length_dataset, word_tokenizer
from transformers import TrainerCallback

import hf_distill.generation.backends
import hf_distill.generation.hf_generate
from hf_distill import DistillConfig, DistillTrainer
from hf_distill.arguments.script_arguments import DataArguments, ModelArguments
from hf_distill.cli import main
from hf_distill.data.datasets import DistillDataCollator, prepare_datasets
from hf_distill.generation.step_generator import prompts, step_writer
from hf_distill.models.loading import load_tokenizer

EOS, PAD = 2, 0


def make_args(tmp_path, **overrides):
    args = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        lmbda=1.0,
        max_new_tokens=5,
        generation_temperature=0.0,
        alpha=0.5,
        temperature=2.0,
        per_device_train_batch_size=4,
        max_steps=3,
        logging_steps=1,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        data_seed=0,
    )
    args.update(overrides)
    return DistillConfig(**args)


def make_trainer(tmp_path, dataset=None, teacher=None, **overrides):
    tokenizer = word_tokenizer()
    return DistillTrainer(
        model=tiny_llama(seed=1, hidden=32, layers=1),
        teacher_model=teacher if teacher is not None else tiny_llama(seed=2, hidden=48, layers=2),
        args=make_args(tmp_path, **overrides),
        train_dataset=dataset if dataset is not None else variable_length_dataset(),
        data_collator=DistillDataCollator(tokenizer),
        processing_class=tokenizer,
    )


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def logged(trainer, key):
    return [log[key] for log in trainer.state.log_history if key in log and "train_runtime" not in log]


def test_lmbda_zero_is_the_off_policy_path_bit_for_bit(tmp_path, monkeypatch):
    plain = make_trainer(tmp_path / "plain", lmbda=0.0)
    plain.train()

    def no_generation(*args, **kwargs):
        raise AssertionError("lmbda=0 and seq_kd=False must not generate")

    monkeypatch.setattr(hf_distill.generation.backends, "generate", no_generation)
    tuned = make_trainer(tmp_path / "tuned", lmbda=0.0, max_new_tokens=3, generation_temperature=0.7)
    assert tuned._generator is None
    tuned.train()
    for name, value in weights(plain).items():
        assert torch.equal(value, weights(tuned)[name]), name
    assert logged(plain, "loss") == logged(tuned, "loss")
    assert "on_policy_fraction" not in tuned.state.log_history[0]


@pytest.mark.parametrize("chunk", [0, 256])
def test_batch_split_gives_the_same_weights(tmp_path, chunk):
    """Greedy on-policy steps: 8 x 1 and 4 x 2 micro-batches generate the same completions and normalise by the same
    global count of completion tokens, so they reach the same weights (dense and fused loss)."""
    whole = make_trainer(tmp_path / "a", per_device_train_batch_size=8, loss_chunk_size=chunk)
    whole.train()
    split = make_trainer(
        tmp_path / "b", per_device_train_batch_size=4, gradient_accumulation_steps=2, loss_chunk_size=chunk
    )
    split.train()
    for name, value in weights(whole).items():
        torch.testing.assert_close(weights(split)[name], value, rtol=1e-5, atol=1e-5, msg=name)
    torch.testing.assert_close(
        torch.tensor(logged(split, "loss")), torch.tensor(logged(whole, "loss")), rtol=1e-5, atol=1e-7
    )
    assert logged(whole, "on_policy_fraction") == [1.0, 1.0, 1.0]


def greedy(model, prompt, max_new_tokens):
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=EOS, pad_token_id=PAD
    )[0, len(prompt) :].tolist()
    return out[: out.index(EOS) + 1] if EOS in out else out


@pytest.mark.parametrize("loss_type", ["reverse_kl", "forward_kl"])
def test_on_policy_loss_equals_an_independent_computation(tmp_path, loss_type):
    """One on-policy step: each prompt completed greedily by `model.generate` on its own, scored by the teacher, the
    divergence by explicit softmax at T = 2, times T**2, summed and divided by the step's completion tokens."""
    dataset = variable_length_dataset(n=4)
    trainer = make_trainer(tmp_path, dataset=dataset, max_steps=1, loss_type=loss_type, log_completions=True)
    student, teacher = tiny_llama(seed=1, hidden=32, layers=1).eval(), tiny_llama(seed=2, hidden=48, layers=2).eval()
    trainer.train()

    total, tokens, teacher_logprob = 0.0, 0, 0.0
    completions = []
    with torch.no_grad():
        for row in dataset:
            prompt = row["input_ids"][: next(i for i, label in enumerate(row["labels"]) if label != -100)]
            completion = greedy(student, prompt, 5)
            completions.append(completion)
            ids = torch.tensor([prompt + completion])
            positions = slice(len(prompt) - 1, ids.shape[1] - 1)
            log_s = F.log_softmax(student(ids).logits[0, positions].double() / 2.0, -1)
            log_t = F.log_softmax(teacher(ids).logits[0, positions].double() / 2.0, -1)
            p, q = (log_t.exp(), log_s.exp()) if loss_type == "forward_kl" else (log_s.exp(), log_t.exp())
            total += 4.0 * (p * (p.log() - q.log())).sum().item()
            tokens += len(completion)
            teacher_logprob += (
                F.log_softmax(teacher(ids).logits[0, positions].double(), -1)[
                    torch.arange(len(completion)), torch.tensor(completion)
                ]
                .sum()
                .item()
            )
    (loss,) = logged(trainer, "loss")
    assert loss == pytest.approx(total / tokens, rel=1e-5)
    assert logged(trainer, "kd_loss") == pytest.approx([total / tokens], rel=1e-5)
    assert logged(trainer, "completion_length") == [tokens / 4]
    assert logged(trainer, "teacher_logprob") == pytest.approx([teacher_logprob / tokens], rel=1e-5)
    with open(tmp_path / "completions.csv") as f:
        rows = list(csv.DictReader(f))
    tokenizer = word_tokenizer()
    assert sorted(r["completion"] for r in rows) == sorted(tokenizer.decode(c) for c in completions)
    assert all(r["writer"] == "student" and r["step"] == "1" for r in rows)


def test_seq_kd_targets_are_the_teachers_greedy_completions(tmp_path):
    dataset = variable_length_dataset(n=4)
    trainer = make_trainer(tmp_path, dataset=dataset, max_steps=1, lmbda=0.0, seq_kd=True)
    seen = []
    compute_loss = trainer.compute_loss

    def spy(model, inputs, *args, **kwargs):
        seen.append(inputs)
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = spy
    trainer.train()
    teacher = tiny_llama(seed=2, hidden=48, layers=2).eval()
    expected = {}
    with torch.no_grad():
        for row in dataset:
            prompt = row["input_ids"][: next(i for i, label in enumerate(row["labels"]) if label != -100)]
            expected[tuple(prompt)] = greedy(teacher, prompt, 5)
    (batch,) = seen
    assert trainer._generated.writer == "teacher"
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
        start = next(i for i, label in enumerate(labels) if label != -100)
        completion = [label for label in labels if label != -100]
        assert completion == expected[tuple(ids[:start])]
    # The CE on the teacher's tokens is kept, with weight alpha.
    (loss,), (ce,), (kd,) = logged(trainer, "loss"), logged(trainer, "ce_loss"), logged(trainer, "kd_loss")
    assert ce > 0 and loss == pytest.approx(0.5 * ce + 0.5 * kd, rel=1e-5)


def test_mixed_steps_follow_the_seeded_draw(tmp_path):
    trainer = make_trainer(tmp_path, lmbda=0.5, max_steps=8, generation_temperature=1.0)
    trainer.train()
    draws = [float(step_writer(trainer.args, step) == "student") for step in range(8)]
    assert logged(trainer, "on_policy_fraction") == draws
    assert 0 < sum(draws) < 8


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_reproduces_the_completions_and_the_weights(tmp_path):
    """Sampled completions (T = 1, top-k): a run stopped after its checkpoint at step 2 and resumed generates the
    rows of an uninterrupted run and ends at its weights."""
    common = dict(
        max_steps=4, generation_temperature=1.0, generation_top_k=20, save_strategy="steps", save_steps=2,
        log_completions=True,
    )  # fmt: skip
    whole = make_trainer(tmp_path / "whole", **common)
    whole.train()
    stopped = make_trainer(tmp_path / "resumed", **common)
    stopped.add_callback(StopAt(3))
    stopped.train()
    resumed = make_trainer(tmp_path / "resumed", **common)
    resumed.train(resume_from_checkpoint=True)

    def rows(folder):
        with open(folder / "completions.csv") as f:
            return [r for r in csv.DictReader(f)]

    assert len(rows(tmp_path / "whole")) == 16
    assert rows(tmp_path / "resumed") == rows(tmp_path / "whole")
    for name, value in weights(whole).items():
        torch.testing.assert_close(weights(resumed)[name], value, rtol=1e-6, atol=1e-7, msg=name)


def test_prompts_are_the_tokens_before_the_last_target_run():
    labels = torch.tensor(
        [[-100, -100, 5, 6, -100, -100, 9, 2, -100], [-100, -100, -100, -100, -100, -100, -100, -100, -100]]
    )
    ids = torch.arange(18).reshape(2, 9)
    mask = torch.tensor([[1] * 8 + [0], [1] * 5 + [0] * 4])
    assert prompts({"input_ids": ids, "labels": labels, "attention_mask": mask}) == [
        [0, 1, 2, 3, 4, 5],
        [9, 10, 11, 12, 13],
    ]
    with pytest.raises(ValueError, match=r"^training example without a prompt \(dataset_format\): its first token"):
        prompts({"input_ids": ids[:1], "labels": ids[:1], "attention_mask": mask[:1]})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lmbda": 1.5}, "invalid lmbda (lmbda=1.5): must be in [0, 1]; set a share of on-policy steps in [0, 1]"),
        ({"lmbda": -0.1}, "invalid lmbda (lmbda=-0.1): must be in [0, 1]"),
        ({"max_new_tokens": 0}, "invalid max_new_tokens (max_new_tokens=0): must be >= 1; set it to 1 or more"),
        (
            {"generation_temperature": -1.0},
            "invalid generation_temperature (generation_temperature=-1.0): must be >= 0",
        ),
        ({"generation_top_p": 0.0}, "invalid generation_top_p (generation_top_p=0.0): must be in (0, 1]"),
        ({"generation_top_k": -2}, "invalid generation_top_k (generation_top_k=-2): must be >= 0"),
        (
            {"generation_kwargs": {"temperature": 0.5}},
            "invalid generation_kwargs (generation_kwargs['temperature']): 'temperature' has its own field: "
            "generation_temperature; set generation_temperature instead",
        ),
        ({"generation_kwargs": {"no_such_field": 1}}, "'no_such_field' is not a transformers.GenerationConfig field"),
        (
            {"generation_kwargs": "{not json"},
            "invalid generation_kwargs (generation_kwargs='{not json'): not valid JSON",
        ),
        (
            {"teacher_cache_dir": "/tmp/cache"},
            "generated text with a teacher cache (lmbda=1.0, teacher_cache_dir='/tmp/cache'): lmbda=1.0 trains on "
            "generated text, which a teacher cache cannot score; unset teacher_cache_dir",
        ),
        (
            {"alpha": 1.0},
            "generation without a teacher (lmbda=1.0, alpha=1.0): alpha=1.0 loads no teacher; set alpha < 1",
        ),
        ({"lmbda": 0.0, "seq_kd": True, "teacher_model_name_or_path": ["a", "b"]}, "seq_kd=True needs one teacher"),
    ],
)
def test_bad_generation_settings_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError) as err:
        make_args(tmp_path, **overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_prompt_only_data_needs_lmbda_one(tmp_path):
    write_jsonl(tmp_path / "data" / "train.jsonl", [{"prompt": f"w{i} w{i + 1}"} for i in range(4)])
    args = DataArguments(dataset_name=str(tmp_path / "data"))
    with pytest.raises(ValueError, match="holds prompts only .* it needs lmbda=1.0"):
        prepare_datasets(args, word_tokenizer())
    train, _ = prepare_datasets(args, word_tokenizer(), prompts_only=True)
    assert len(train) == 4 and all(set(labels) == {-100} for labels in train["labels"])


def test_a_tokenizer_without_eos_is_refused_before_any_model_loads(tmp_path):
    tokenizer = word_tokenizer()
    tokenizer.eos_token = None
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    config = make_args(tmp_path)
    model_args = ModelArguments(model_name_or_path="unused", tokenizer_name_or_path=str(tmp_path / "tokenizer"))
    with pytest.raises(ValueError, match=r"^tokenizer without an end-of-sequence token \(tokenizer_name_or_path="):
        load_tokenizer(model_args, config)
    with pytest.raises(ValueError, match="^tokenizer without an eos_token"):
        DistillTrainer(
            model=tiny_llama(seed=1), teacher_model=tiny_llama(seed=2), args=config, processing_class=tokenizer
        )


def test_chat_prompts_train_on_policy_from_a_recipe(workspace, capsys):
    """A prompt-only chat dataset (conversations ending with the user's turn) through `hf-distill train`."""
    tmp_path, recipe = workspace
    rows = [{"messages": [{"role": "user", "content": f"w{i} w{i + 3} w{i + 7}"}]} for i in range(16)]
    write_jsonl(tmp_path / "prompts" / "train.jsonl", rows)
    text = open(recipe).read().replace(f"dataset_name: {tmp_path / 'data'}\ndataset_eval_split: eval\n", "")
    prompts_recipe = tmp_path / "on_policy.yaml"
    prompts_recipe.write_text(text + f"dataset_name: {tmp_path / 'prompts'}\n")
    main(
        [
            "train", str(prompts_recipe), "--lmbda", "1.0", "--max_new_tokens", "4", "--generation_temperature", "0",
            "--loss_type", "reverse_kl", "--log_completions", "true",
        ]
    )  # fmt: skip
    with open(tmp_path / "out" / "metrics.csv") as f:
        logs = [r for r in csv.DictReader(f) if r["split"] == "train"]
    assert [float(r["on_policy_fraction"]) for r in logs] == [1.0, 1.0]
    assert all(0 < float(r["completion_length"]) <= 4 for r in logs)
    with open(tmp_path / "out" / "completions.csv") as f:
        completions = list(csv.DictReader(f))
    assert completions and all(
        r["prompt"].startswith("<user>") and r["prompt"].endswith("<asst>") for r in completions
    )


def test_generation_leaves_the_model_and_the_random_state_as_they_were():
    """Eval mode and the KV cache during generation only: training mode, gradient checkpointing, the config's
    use_cache and the global random state (which a resumed run restores from its checkpoint) are untouched."""
    model = tiny_llama(seed=1, hidden=32, layers=1)
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    model.train()
    rng = torch.get_rng_state()
    config = make_args("/tmp/unused", generation_temperature=1.0).generation_config
    config.update(pad_token_id=PAD, eos_token_id=EOS, use_cache=True)
    first = hf_distill.generation.hf_generate.generate(model, [[5, 6, 7], [8]], config, seed=3, synced_gpus=False)
    assert model.training and model.is_gradient_checkpointing and model.config.use_cache is False
    assert torch.equal(torch.get_rng_state(), rng)
    again = hf_distill.generation.hf_generate.generate(model, [[5, 6, 7], [8]], config, seed=3, synced_gpus=False)
    other = hf_distill.generation.hf_generate.generate(model, [[5, 6, 7], [8]], config, seed=4, synced_gpus=False)
    assert first == again and first.tokens != other.tokens
    assert all(len(t) <= 5 for t in first.tokens)
