"""The generation engine's fields (`GenerationEngineArguments`): refused in one line when the config is built, with
or without vLLM installed, and the backend a trainer resolves from them."""

import importlib.util

import pytest
from testing_utils import tiny_llama, variable_length_dataset, word_tokenizer

from hf_distill import DistillConfig, DistillTrainer
from hf_distill.data.datasets import DistillDataCollator
from hf_distill.generation import engine_config
from hf_distill.user_errors import UserInputError


def config(tmp_path, **fields):
    return DistillConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **fields)


@pytest.fixture
def vllm_found(monkeypatch):
    monkeypatch.setattr(engine_config, "vllm_installed", lambda: True)


def refused(tmp_path, **fields) -> str:
    with pytest.raises(UserInputError) as info:
        config(tmp_path, **fields)
    line = str(info.value)
    assert "\n" not in line
    return line


def test_use_vllm_without_vllm_names_the_install_command(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    assert refused(tmp_path, use_vllm=True, lmbda=1.0) == (
        "vLLM is not installed (use_vllm=True): this setting generates with vLLM, which this Python cannot find; "
        "install it with: bash scripts/install_vllm.sh"
    )
    # Not asked for, not needed.
    assert config(tmp_path, lmbda=1.0).use_vllm is False


def test_use_vllm_where_nothing_generates_is_refused(tmp_path, vllm_found):
    line = refused(tmp_path, use_vllm=True)
    assert line.startswith("use_vllm that would be ignored (use_vllm=True, lmbda=0.0): ")
    assert "nothing generates: lmbda is 0.0, seq_kd is False and eval_generate is False" in line
    assert line.endswith("remove use_vllm, or use lmbda > 0, seq_kd: true or eval_generate: true")
    for reads in ({"lmbda": 0.5}, {"lmbda": 0.0, "seq_kd": True}, {"eval_generate": True}):
        assert config(tmp_path, use_vllm=True, **reads).use_vllm


@pytest.mark.parametrize("name, value", [("vllm_gpu_memory_utilization", 0.5), ("vllm_max_model_length", 256)])
def test_vllm_settings_without_use_vllm_are_refused(tmp_path, vllm_found, name, value):
    line = refused(tmp_path, lmbda=1.0, **{name: value})
    assert line.startswith(f"{name} that would be ignored ({name}={value!r}, use_vllm=False")
    assert line.endswith(f"remove {name}, or use use_vllm: true")
    assert getattr(config(tmp_path, lmbda=1.0, use_vllm=True, **{name: value}), name) == value


def test_generation_kwargs_vllm_cannot_honour_are_refused_when_the_config_is_built(tmp_path, vllm_found):
    line = refused(tmp_path, lmbda=1.0, use_vllm=True, generation_kwargs={"no_repeat_ngram_size": 2})
    assert line.startswith("generation setting not available with vLLM (generation_kwargs['no_repeat_ngram_size']): ")
    # transformers takes it, and what vLLM takes passes.
    kwargs = {"no_repeat_ngram_size": 2}
    assert config(tmp_path, lmbda=1.0, generation_kwargs=kwargs).generation_kwargs == kwargs
    assert config(tmp_path, lmbda=1.0, use_vllm=True, generation_kwargs={"repetition_penalty": 1.1}).use_vllm


def test_server_mode_and_sleep_mode_are_refused(tmp_path, vllm_found):
    assert refused(tmp_path, lmbda=1.0, use_vllm=True, vllm_mode="server") == (
        "vLLM server mode (vllm_mode='server'): not supported yet; use colocate (vllm_mode: colocate, vLLM in the "
        "training process)"
    )
    assert refused(tmp_path, lmbda=1.0, use_vllm=True, vllm_enable_sleep_mode=True).startswith(
        "vLLM sleep mode (vllm_enable_sleep_mode=True): not supported yet"
    )
    assert "vllm_mode" in refused(tmp_path, vllm_mode="bogus")


def trainer(tmp_path, **fields):
    tokenizer = word_tokenizer()
    return DistillTrainer(
        model=tiny_llama(seed=1),
        teacher_model=tiny_llama(seed=2),
        args=config(tmp_path, max_new_tokens=3, **fields),
        train_dataset=variable_length_dataset(n=4),
        data_collator=DistillDataCollator(tokenizer),
        processing_class=tokenizer,
    )


def test_the_backend_is_resolved_once_when_the_trainer_is_built(tmp_path):
    assert trainer(tmp_path, lmbda=1.0)._backend.name == "hf"
    assert trainer(tmp_path, lmbda=0.0, eval_generate=True)._backend.name == "hf"
    assert trainer(tmp_path, lmbda=0.0)._backend is None
