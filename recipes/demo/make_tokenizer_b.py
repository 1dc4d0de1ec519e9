"""Train the demo's second tokenizer, for cross-tokenizer distillation, into recipes/demo/tokenizer_b/: a byte-level
BPE of the same data (recipes/demo/data/train.jsonl) with a smaller vocabulary (512 instead of 1024), other special
tokens and another chat template than recipes/demo/tokenizer, so that the two split most words differently.

python recipes/demo/make_tokenizer_b.py

The teacher of recipes/demo/teacher_b.yaml is trained on it. BPE training has no randomness (ties between equally
frequent merges are broken by token id), so two runs write identical files.
"""

import os

from make_tokenizer import train_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "tokenizer_b")
VOCAB_SIZE = 512
MAX_LENGTH = 160

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ["[SYSTEM]", "[USER]", "[ASSISTANT]"]

# `<s>[USER] Hi\n[ASSISTANT] Hello.</s>\n`: a space after each role marker and a newline after each turn, where
# recipes/demo/tokenizer has neither. The reply's end-of-sequence token follows its content directly.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "[ASSISTANT] {% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}\n"
    "{% elif message['role'] in ['system', 'user'] %}"
    "[{{ message['role'] | upper }}] {{ message['content'] }}\n"
    "{% else %}"
    "{{ raise_exception('unknown role ' ~ message['role'] ~ ': use system, user or assistant') }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}[ASSISTANT] {% endif %}"
)


def main():
    tokenizer = train_tokenizer(
        VOCAB_SIZE,
        [BOS, EOS, PAD, *ROLE_TOKENS],
        bos=BOS,
        eos=EOS,
        pad=PAD,
        max_length=MAX_LENGTH,
        chat_template=CHAT_TEMPLATE,
        bos_on_text=False,
    )
    tokenizer.save_pretrained(OUT_DIR)
    print(f"{OUT_DIR}: {len(tokenizer)} tokens")


if __name__ == "__main__":
    main()
