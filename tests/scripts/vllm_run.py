"""An on-policy run of a small student of the demo teacher's shape, generating with transformers or vLLM; used by
tests/generation/test_vllm_backend.py, in process and as a process it kills with SIGKILL.

python tests/scripts/vllm_run.py OUT_DIR {none,kill,resume} KILL_STEP    # sampled (T = 1), use_vllm, 4 steps
"""

import os
import signal
import sys

import torch
from testing_utils import REPO_ROOT, variable_length_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from hf_distill import DistillConfig, DistillTrainer
from hf_distill.data.datasets import DistillDataCollator

DEMO = os.path.join(REPO_ROOT, "recipes", "demo")


def make_trainer(out_dir, **overrides) -> DistillTrainer:
    """The demo teacher (float32) and a one-layer student of its shape (random, seed 1) on random prompts of the
    demo vocabulary; greedy on-policy steps unless `overrides` say otherwise. The learning rate is high enough that
    the greedy completions change from step to step."""
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(DEMO, "tokenizer"))
    teacher = AutoModelForCausalLM.from_pretrained(os.path.join(DEMO, "teacher"), dtype=torch.float32)
    config = LlamaConfig.from_pretrained(os.path.join(DEMO, "teacher"), num_hidden_layers=1)
    torch.manual_seed(1)
    student = LlamaForCausalLM(config)
    args = dict(
        output_dir=str(out_dir),
        use_cpu=True,
        lmbda=1.0,
        max_new_tokens=8,
        generation_temperature=0.0,
        alpha=0.5,
        loss_type="reverse_kl",
        per_device_train_batch_size=4,
        max_steps=4,
        logging_steps=1,
        learning_rate=3e-2,
        lr_scheduler_type="constant",
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        log_completions=True,
        seed=0,
        data_seed=0,
    )
    args.update(overrides)
    return DistillTrainer(
        model=student,
        teacher_model=teacher,
        args=DistillConfig(**args),
        train_dataset=variable_length_dataset(n=16, vocab=config.vocab_size),
        data_collator=DistillDataCollator(tokenizer),
        processing_class=tokenizer,
    )


SAMPLED = dict(use_vllm=True, generation_temperature=1.0, save_strategy="steps", save_steps=1)


def main(out_dir: str, mode: str, kill_step: int) -> None:
    trainer = make_trainer(out_dir, **SAMPLED)
    if mode == "kill":
        save_checkpoint = trainer._save_checkpoint

        def checkpoint_then_die(*args, **kwargs):
            save_checkpoint(*args, **kwargs)
            if trainer.state.global_step == kill_step:
                os.kill(os.getpid(), signal.SIGKILL)

        trainer._save_checkpoint = checkpoint_then_die
    trainer.train(resume_from_checkpoint=True if mode == "resume" else None)
    torch.save(
        {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, os.path.join(out_dir, "final.pt")
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
