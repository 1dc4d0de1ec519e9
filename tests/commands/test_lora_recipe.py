"""A recipe's LoRA student (`use_peft` and the `lora_*` fields of `ModelArguments`), through `hf-distill train`."""

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from testing_utils import tiny_llama, word_tokenizer
from transformers import AutoModelForCausalLM

import hf_distill.commands.train
from hf_distill.arguments.script_arguments import ModelArguments
from hf_distill.cli import main

peft = pytest.importorskip("peft")

LORA_FLAGS = ["--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.0"]


@pytest.fixture
def pretrained_recipe(workspace):
    """The workspace recipe with a pretrained student (saved with its tokenizer), as a LoRA student needs."""
    tmp_path, recipe = workspace
    student = tmp_path / "student"
    tiny_llama(seed=1, hidden=32, layers=1).save_pretrained(student)
    word_tokenizer().save_pretrained(student)
    text = open(recipe).read()
    text = text.replace(f"model_name_or_path: {tmp_path / 'student_config'}\n", f"model_name_or_path: {student}\n")
    text = text.replace("student_init: from_config\n", "")
    path = tmp_path / "lora.yaml"
    path.write_text(text)
    return tmp_path, str(path), student


def test_lora_student_trains_only_the_adapter_and_saves_a_peft_adapter(pretrained_recipe, monkeypatch):
    tmp_path, recipe, student_dir = pretrained_recipe
    built = []
    build = hf_distill.commands.train.build_trainer
    monkeypatch.setattr(
        hf_distill.commands.train, "build_trainer", lambda *a, **k: built.append(build(*a, **k)) or built[0]
    )
    main(["train", recipe, *LORA_FLAGS, "--lora_target_modules", "q_proj", "v_proj", "--max_steps", "2"])

    (trainer,) = built
    model = trainer.model
    assert isinstance(model, peft.PeftModel) and trainer.fused_loss
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}
    assert model.peft_config["default"].r == 4 and model.peft_config["default"].lora_alpha == 8
    # The base weights are the student's, untouched; the adapter moved (LoRA's B starts at zero).
    original = load_file(student_dir / "model.safetensors")
    base = model.get_base_model().state_dict()
    for key, value in original.items():
        trained = base.get(key, base.get(key.replace(".weight", ".base_layer.weight")))
        torch.testing.assert_close(trained.cpu(), value, rtol=0, atol=0, msg=key)

    out = tmp_path / "out"
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)
    loaded = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(student_dir), out)
    ids = torch.tensor([[1, 7, 9, 11, 13]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model.cpu().eval()(input_ids=ids).logits)
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == str(student_dir)


def test_all_linear_reaches_peft_as_its_shorthand(pretrained_recipe):
    from hf_distill.models.loading import with_lora

    args = ModelArguments(model_name_or_path="unused", use_peft=True, lora_target_modules=["all-linear"])
    model = with_lora(tiny_llama(seed=1), args)
    targets = {n.split(".")[-4] for n, p in model.named_parameters() if p.requires_grad}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--lora_r", "8"],
            "LoRA setting without use_peft (lora_r=8): use_peft is false, so it would be ignored; set use_peft: "
            "true, or remove the setting",
        ),
        (
            ["--lora_target_modules", "q_proj", "--use_dora", "true"],
            "LoRA setting without use_peft (lora_target_modules=['q_proj'], use_dora=True): use_peft is false",
        ),
        ([*LORA_FLAGS, "--lora_r", "0"], "invalid lora_r (lora_r=0): must be >= 1; set a LoRA rank of 1 or more"),
        (
            [*LORA_FLAGS, "--lora_dropout", "1.0"],
            "invalid lora_dropout (lora_dropout=1.0): must be in [0, 1); set a dropout in [0, 1)",
        ),
        (
            [*LORA_FLAGS, "--lora_target_modules", "nope"],
            "LoRA target modules not found (lora_target_modules=['nope']): Target modules {'nope'} not found in the "
            "base model.",
        ),
    ],
)
def test_bad_lora_settings_are_one_line(pretrained_recipe, capsys, flags, message):
    _, recipe, _ = pretrained_recipe
    with pytest.raises(SystemExit) as exited:
        main(["train", recipe, *flags])
    assert exited.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(f"hf-distill: error: {message}")


def test_use_peft_over_random_weights_is_refused(workspace, capsys):
    _, recipe = workspace
    with pytest.raises(SystemExit):
        main(["check", recipe, *LORA_FLAGS])
    assert capsys.readouterr().err.strip() == (
        "hf-distill: error: LoRA over random weights (use_peft=True, student_init='from_config'): use_peft trains "
        "an adapter over the student's weights, which from_config makes random; use student_init: pretrained"
    )
