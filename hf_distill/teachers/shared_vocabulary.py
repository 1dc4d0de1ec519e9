"""The tokens a student's and a teacher's vocabularies share, matched by string, precomputed once per run for
cross-tokenizer distillation (`hf_distill.losses.cross_vocab.VocabularyMap`)."""

from collections import Counter

import torch

from ..losses import VocabularyMap


def token_keys(tokenizer) -> dict[int, str | tuple[str, str]]:
    """What each token id of `tokenizer` stands for, compared across tokenizers: its text, decoded alone by the
    tokenizer itself (its own normalisation: `Ġthe` and `▁the` both read ` the`); or, where that text is ambiguous
    (two ids decode to the same text, e.g. SentencePiece's `▁the` and `the`) or not text at all (a partial UTF-8
    byte decodes to U+FFFD), the pair `("token", raw token string)`, which matches the same raw token only."""
    ids = sorted(tokenizer.get_vocab().values())
    texts = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    counts = Counter(texts)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return {
        i: text if counts[text] == 1 and text and "\ufffd" not in text else ("token", token)
        for i, text, token in zip(ids, texts, tokens)
    }


def shared_vocabulary(student_tokenizer, teacher_tokenizer, student_width: int, teacher_width: int) -> VocabularyMap:
    """The ids of the tokens with the same key (`token_keys`) in both tokenizers, among the first `student_width`
    and `teacher_width` ids (the models' logit widths)."""
    student = {key: i for i, key in token_keys(student_tokenizer).items() if i < student_width}
    teacher = {key: i for i, key in token_keys(teacher_tokenizer).items() if i < teacher_width}
    pairs = sorted((student[key], teacher[key]) for key in student.keys() & teacher.keys())
    ids = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
    return VocabularyMap(ids[:, 0].contiguous(), ids[:, 1].contiguous(), student_width, teacher_width)
