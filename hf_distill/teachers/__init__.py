"""The teacher a run distils from, built once from the config into one object (`build`): live models (one, or an
ensemble), one with its own tokenizer, or a teacher cache's top-k. Beside it, what every kind needs: placement for
the distributed engine (`placement`), the check of its numbers (`numerics`), the vocabulary shared with a
cross-tokenizer student (`shared_vocabulary`), context lengths (`context_length`), and the teacher cache: its builder
(`cache_builder`) and its files, read and checked (`cache_store`)."""
