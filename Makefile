.PHONY: style quality test test-all bench

style:
	ruff check --fix .
	ruff format .

quality:
	ruff check .
	ruff format --check .

test:
	python -m pytest -m "not slow" -q

test-all:
	python -m pytest -q

bench:
	python benchmarks/loss_memory.py
	python benchmarks/distill_vs_finetune.py
	python benchmarks/evaluate_demo.py
	python benchmarks/on_policy_vs_off_policy.py
