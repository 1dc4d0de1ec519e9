"""The models of a run as `transformers` gives them: loading the tokenizer, student and teachers with the run's
arguments (`loading`), causal LMs, their configs and weight files (`causal_lm`), and the final hidden states and LM
heads the fused loss reads, with the probe that checks a head reproduces its model's logits (`hidden_states`)."""
