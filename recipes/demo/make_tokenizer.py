"""Train the offline demo's byte-level BPE tokenizer on recipes/demo/data/train.jsonl into recipes/demo/tokenizer/.

python recipes/demo/make_data.py && python recipes/demo/make_tokenizer.py

The chat template wraps each assistant reply, end-of-sequence token included, in `{% generation %}` markers, so
`apply_chat_template(..., return_assistant_tokens_mask=True, return_dict=True)` marks exactly the tokens the student
is trained on. BPE training has no randomness and breaks ties between equally frequent merges by token id, and the
ids start from the sorted byte alphabet, so two runs write identical files.
"""

import json
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_FILE = os.path.join(HERE, "data", "train.jsonl")
OUT_DIR = os.path.join(HERE, "tokenizer")
VOCAB_SIZE = 1024
MAX_LENGTH = 128

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

# `<|user|>Hi<|assistant|>Hello.<|eos|>`: no separators, so every rendered token is either a role marker, content
# or the reply's end. Generation stops at <|eos|>, which the mask counts as part of the reply.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% elif message['role'] in ['system', 'user'] %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}"
    "{% else %}"
    "{{ raise_exception('unknown role ' ~ message['role'] ~ ': use system, user or assistant') }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def texts():
    with open(TRAIN_FILE, encoding="utf-8") as f:
        for line in f:
            for message in json.loads(line)["messages"]:
                yield message["content"]


def train_tokenizer(
    vocab_size: int,
    specials: list[str],
    *,
    bos: str,
    eos: str,
    pad: str,
    max_length: int,
    chat_template: str,
    bos_on_text: bool,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE of the demo's training texts. `specials` take the first ids, in their order: `bos`, `eos`,
    `pad` and the others (role markers, additional special tokens)."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts(), trainer=trainer)
    if bos_on_text:
        # Plain `tokenizer(text)` starts with BOS like a rendered chat; the chat template adds its own, and
        # apply_chat_template tokenizes without special tokens, so a conversation gets exactly one.
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B:1", special_tokens=[(bos, backend.token_to_id(bos))]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        additional_special_tokens=[t for t in specials if t not in (bos, eos, pad)],
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def main():
    tokenizer = train_tokenizer(
        VOCAB_SIZE,
        [PAD, BOS, EOS, *ROLE_TOKENS],
        bos=BOS,
        eos=EOS,
        pad=PAD,
        max_length=MAX_LENGTH,
        chat_template=CHAT_TEMPLATE,
        bos_on_text=True,
    )
    tokenizer.save_pretrained(OUT_DIR)
    print(f"{OUT_DIR}: {len(tokenizer)} tokens")


if __name__ == "__main__":
    main()
