"""Module paths of earlier versions (the flat layout before the folders), kept importable.

`import hf_distill.pipeline` or `from hf_distill.teacher_cache import attach_teacher_cache` gives the module that now
holds that code (`hf_distill.commands.train`, `hf_distill.teachers.cache_builder`): the same module object, so a
`mock.patch("hf_distill.pipeline.x")` patches the code that runs. `hf_distill.arguments`, `hf_distill.data`,
`hf_distill.teachers` and `hf_distill.generation` are folders now and give their earlier public names themselves.
"""

import importlib
import importlib.abc
import importlib.util
import sys

# Earlier module (under hf_distill) -> the module that holds its code now.
MOVED = {
    "metric_names": "metrics.names",
    "teacher_placement": "teachers.placement",
    "teacher_numerics": "teachers.numerics",
    "shared_vocabulary": "teachers.shared_vocabulary",
    "context_length": "teachers.context_length",
    "teacher_cache": "teachers.cache_builder",
    "teacher_cache_files": "teachers.cache_store",
    "loading": "models.loading",
    "modeling": "models.causal_lm",
    "hidden_states": "models.hidden_states",
    "data_files": "data.raw_dataset",
    "cross_tokenization": "data.cross_tokenization",
    "token_alignment": "data.token_alignment",
    "greedy_decoding": "generation.greedy",
    "eval_generation": "generation.eval_answers",
    "checkpoints": "run.checkpoints",
    "run_lock": "run.lock",
    "stop_signals": "run.signals",
    "atomic_write": "run.atomic_write",
    "disk_space": "run.disk_space",
    "nonfinite_guard": "run.nonfinite_guard",
    "run_files": "run.logs",
    "csv_files": "run.csv_writer",
    "final_model": "run.final_model",
    "cpu_threads": "run.cpu_threads",
    "process_group": "run.process_group",
    "main_process_first": "run.main_process_first",
    "model_card": "run.model_card",
    "pipeline": "commands.train",
    "checks": "commands.check",
    "evaluation": "commands.evaluate",
    "report": "commands.report",
    "rounds": "commands.rounds",
    "recipe": "commands.recipe",
    "field_docs": "arguments.field_docs",
    "argument_checks": "arguments.training_checks",
    "trainer_arguments": "arguments.trainer_options",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        name = fullname.removeprefix("hf_distill.")
        if name != fullname and name in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"hf_distill.{MOVED[spec.name.removeprefix('hf_distill.')]}")

    def exec_module(self, module):
        pass  # already executed under its own name


def install() -> None:
    """Put the finder last on `sys.meta_path` (once): real modules are always found first."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
