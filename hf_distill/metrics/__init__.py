"""Answer metrics: plain functions in `answers.py`, and the `evaluate.Metric` modules over them (`exact_match.py`,
`token_f1.py`), loaded by path with `evaluate.load` (`commands.evaluate.load_metrics`) so they work offline."""
