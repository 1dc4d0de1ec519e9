"""A trimmed copy of TRL 1.16's `trl/scripts/sft.py` (TrlParser over ScriptArguments, SFTConfig and ModelConfig, the
model loaded by SFTTrainer from its name, PEFT from ModelConfig) with the 2-line swap that makes it distil; used by
test_trl_sft.py on the demo models. The teacher is one more flag:

python tests/scripts/trl_sft_distill.py --model_name_or_path STUDENT --dataset_name DATA --output_dir OUT \
    --teacher_model_name_or_path recipes/demo/teacher [--packing --max_length 64 ...]
"""

from datasets import load_dataset
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config

from hf_distill.trl_sft import DistillSFTConfig as SFTConfig  # swap 1 of 2: was `from trl import SFTConfig`
from hf_distill.trl_sft import DistillSFTTrainer as SFTTrainer  # swap 2 of 2: was `from trl import SFTTrainer`


def main(script_args, training_args, model_args):
    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    if training_args.model_init_kwargs is not None:
        model_init_kwargs.update(training_args.model_init_kwargs)
    training_args.model_init_kwargs = model_init_kwargs

    dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)

    trainer = SFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    return trainer


def make_parser():
    return TrlParser((ScriptArguments, SFTConfig, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
