"""What the side-by-side trainer benchmarks (`on_policy_speed.py`, `step_overhead.py`) build alike: Llama models
with random weights from a config, and the `TrainingArguments` values that make the compared trainers do equal work."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def llama(hidden: int, layers: int, vocab: int, seed: int, heads: int, max_positions: int) -> LlamaForCausalLM:
    """A Llama with untied heads and random weights drawn from `seed`."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def equal_training_args(opts, output_dir: str) -> dict:
    """Arguments every compared trainer gets (`opts.batch_size`, `opts.max_steps`): float32, a constant learning
    rate, no weight decay, no gradient checkpointing, one log at the end, no checkpoint, fixed seeds."""
    return dict(
        output_dir=output_dir,
        use_cpu=True,
        per_device_train_batch_size=opts.batch_size,
        gradient_accumulation_steps=1,
        max_steps=opts.max_steps,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        gradient_checkpointing=False,
        bf16=False,
        temperature=1.0,
        logging_steps=opts.max_steps,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=0,
        data_seed=0,
    )
