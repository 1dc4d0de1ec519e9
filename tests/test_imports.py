"""The package's module graph: no import circle, and no package import hidden in a function to dodge one."""

import ast
import importlib
import os
import sys

from hf_distill.moved_modules import MOVED

PACKAGE = "hf_distill"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)


def _modules() -> dict[str, str]:
    """Dotted name -> file of every module of the package, subpackages included (a package is its __init__)."""
    modules = {}
    for folder, _, names in os.walk(ROOT):
        for name in names:
            if name.endswith(".py"):
                parts = os.path.relpath(os.path.join(folder, name), os.path.dirname(ROOT))[: -len(".py")].split(os.sep)
                modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = os.path.join(folder, name)
    return modules


def _targets(node: ast.stmt, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The package modules an import statement of `module` runs."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in known]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = node.module or ""
    # `from .pkg import sub` runs the submodule `sub` when there is one, else takes a name from `pkg`.
    subs = [f"{name}.{alias.name}" for alias in node.names if f"{name}.{alias.name}" in known]
    return subs or ([name] if name in known else [])


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the package modules its top-level statements import; and every package import below top level."""
    modules = _modules()
    known = set(modules)
    graph, nested = {}, []
    for module, path in modules.items():
        tree = ast.parse(open(path).read(), path)
        is_package = path.endswith("__init__.py")
        graph[module] = {t for node in tree.body for t in _targets(node, module, is_package, known)}
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if id(node) not in top and _targets(node, module, is_package, known):
                nested.append(f"{module}:{node.lineno}")
    return graph, nested


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def test_the_module_graph_has_no_circle():
    graph, _ = _graph()
    assert len(graph) > 10 and graph["hf_distill.commands.train"]  # the parser found the modules and their imports
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_no_package_import_below_top_level():
    """An import inside a function is how a circle gets dodged instead of removed."""
    _, nested = _graph()
    assert not nested, nested


def test_the_cache_teacher_command_does_not_import_the_train_pipeline():
    graph, _ = _graph()
    assert "hf_distill.models.loading" in graph["hf_distill.commands.cache_teacher"]
    assert "hf_distill.commands.train" not in _reachable(graph, "hf_distill.commands.cache_teacher")


def test_a_circle_is_found():
    """The checker itself: a planted circle, and a nested import, are reported."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse("def f():\n    from .pipeline import build_trainer\n")
    (nested,) = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert _targets(nested, "hf_distill.teacher_cache", False, {"hf_distill.pipeline"}) == ["hf_distill.pipeline"]


# Module paths the README and docs showed before the folders, and a name from each.
DOCUMENTED = {
    "hf_distill": "DistillTrainer",
    "hf_distill.config": "DistillConfig",
    "hf_distill.trl_sft": "DistillSFTTrainer",
    "hf_distill.losses": "fused_distillation_loss",
    "hf_distill.data": "DistillDataCollator",
    "hf_distill.cli": "main",
    "hf_distill.pipeline": "build_trainer",
    "hf_distill.recipe": "parse_recipe",
    "hf_distill.teacher_cache": "attach_teacher_cache",
    "hf_distill.evaluation": "run_evaluation",
    "hf_distill.model_card": "write_model_card",
    "hf_distill.process_group": "leave_process_group",
    "hf_distill.greedy_decoding": "greedy_completions",
    "hf_distill.user_errors": "UserError",
    "hf_distill.field_docs": "parse_field_docs",
    "hf_distill.metrics.answers": "exact_match",
}


def test_documented_import_paths_keep_working():
    for module, name in DOCUMENTED.items():
        assert hasattr(importlib.import_module(module), name), f"{module}.{name}"
    # Modules of earlier versions that are folders now give their public names.
    earlier = {
        "arguments": ["ModelArguments", "DataArguments"],
        "data": ["DistillDataCollator", "prepare_datasets", "tokenize_dataset", "split_prompt", "CACHE_COLUMNS"],
        "generation": ["StepGenerator", "step_writer", "generate", "prompts"],
        "teachers": ["LiveTeacher", "CachedTeacher", "CrossTokenizerTeacher", "build_teacher"],
    }
    for package, names in earlier.items():
        module = importlib.import_module(f"hf_distill.{package}")
        assert all(hasattr(module, name) for name in names), package


def test_every_earlier_module_is_the_module_that_now_holds_its_code():
    for old, new in MOVED.items():
        assert importlib.import_module(f"hf_distill.{old}") is importlib.import_module(f"hf_distill.{new}"), old
    # The same module object: a patch through the old path changes the code that runs.
    assert sys.modules["hf_distill.pipeline"] is sys.modules["hf_distill.commands.train"]
