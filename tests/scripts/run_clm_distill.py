"""A trimmed copy of transformers' `examples/pytorch/language-modeling/run_clm.py` (tokenize, group texts into
blocks, `default_data_collator`, train, evaluate, `perplexity = exp(eval_loss)`) with the 3-line swap that makes it
distil; used by test_dropin.py on the demo models.

python tests/scripts/run_clm_distill.py OUTPUT_DIR [MAX_STEPS]
"""

import math
import sys
from itertools import chain

from datasets import load_dataset
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, default_data_collator

from hf_distill import DistillConfig as TrainingArguments  # swap 1 of 3: was `from transformers import ...`
from hf_distill import DistillTrainer as Trainer  # swap 2 of 3

DEMO = "recipes/demo"
BLOCK_SIZE = 64


def main(output_dir: str, max_steps: int = 3) -> dict:
    training_args = TrainingArguments(
        output_dir=output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-3,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        teacher_model_name_or_path=f"{DEMO}/teacher",  # swap 3 of 3: the teacher
    )
    raw = load_dataset(
        "json", data_files={"train": f"{DEMO}/data/train.jsonl", "validation": f"{DEMO}/data/eval.jsonl"}
    )
    raw = raw.map(
        lambda ex: {"text": " ".join(m["content"] for m in ex["messages"])}, remove_columns=["id", "messages"]
    )
    tokenizer = AutoTokenizer.from_pretrained(f"{DEMO}/tokenizer")
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(f"{DEMO}/student_config"))

    tokenized = raw.map(lambda ex: tokenizer(ex["text"]), batched=True, remove_columns=["text"])

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = (len(concatenated["input_ids"]) // BLOCK_SIZE) * BLOCK_SIZE
        result = {
            k: [t[i : i + BLOCK_SIZE] for i in range(0, total_length, BLOCK_SIZE)] for k, t in concatenated.items()
        }
        result["labels"] = result["input_ids"].copy()
        return result

    lm_datasets = tokenized.map(group_texts, batched=True)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=lm_datasets["train"],
        eval_dataset=lm_datasets["validation"].select(range(8)),
        processing_class=tokenizer,
        data_collator=default_data_collator,
    )
    train_result = trainer.train()
    metrics = dict(train_result.metrics)
    eval_metrics = trainer.evaluate()
    eval_metrics["perplexity"] = math.exp(eval_metrics["eval_loss"])  # run_clm.py's line, unchanged
    metrics.update(eval_metrics)
    return metrics


if __name__ == "__main__":
    print(main(sys.argv[1], *map(int, sys.argv[2:])))
