"""The package's shape: no import cycles, one declaration per head, data/ mirroring tasks/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

import toolkit

PACKAGE = Path(toolkit.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the toolkit modules it imports, at module level or inside a function (a deferred
    import still closes a cycle), with the packages that importing a submodule runs first."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                while target and target != name:
                    if not name.startswith(target + "."):  # a package's own __init__ is already running
                        graph[name].add(target)
                    target = target.rpartition(".")[0]
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, …, a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_package_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_deferred_and_package_imports():
    graph = import_graph()
    assert "toolkit.diagnose" in graph["toolkit.cli"]  # imported inside cmd_diagnose
    assert {"toolkit.data.base", "toolkit.data.readers"} <= graph["toolkit.data.tagging"]


# ----------------------------------------------------------------------------- heads
def test_every_head_has_one_name_in_its_task_data_module_and_config():
    from toolkit.heads import HEADS

    conf = PACKAGE / "conf" / "task"
    assert {"tagging", "classification", "language_model", "seq2seq"} <= set(HEADS)
    for name, head in HEADS.items():
        assert head.task.head == name and head.data.kind == name
        task_yaml = yaml.safe_load((conf / f"{head.config}.yaml").read_text())
        assert task_yaml["task"]["head"] == name, f"conf/task/{head.config}.yaml"
        assert callable(head.read) and callable(head.predict)


def test_data_mirrors_tasks_one_module_per_head():
    from toolkit.heads import HEADS

    for head in HEADS.values():
        task_module, data_module = head.task.__module__, head.data.__module__
        assert task_module.startswith("toolkit.tasks.") and data_module.startswith("toolkit.data.")
        assert task_module.rpartition(".")[2] == data_module.rpartition(".")[2], (task_module, data_module)


def test_a_head_whose_data_module_carries_another_name_is_refused():
    from dataclasses import replace

    from toolkit.heads import HEADS, register

    with pytest.raises(ValueError, match="a head has one name everywhere"):
        register(replace(HEADS["tagging"], name="tagger"))
    with pytest.raises(ValueError, match="registered twice"):
        register(HEADS["tagging"])


def test_the_readme_layout_map_names_every_module():
    readme = (PACKAGE.parent / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    sections = {"": layout}  # the block of each package: from its "name/" line to the next top-level entry
    for package in ("cells", "tasks", "data", "testing"):
        start = layout.index(f"  {package}/")
        rest = layout[start + 1:]
        end = min((rest.index(f"\n  {w}") for w in ("cells/", "layers.py", "heads.py", "tasks/", "data/",
                                                     "checkpoints.py", "testing/", "config.py")
                   if f"\n  {w}" in rest and rest.index(f"\n  {w}") > 0), default=len(rest))
        sections[package] = rest[:end]
    missing = []
    for path in sorted(PACKAGE.glob("**/*.py")):
        rel = path.relative_to(PACKAGE)
        if path.name == "__init__.py" or rel.parts[0] == "conf":
            continue
        where = sections[rel.parts[0]] if len(rel.parts) > 1 else layout
        if path.name not in where:
            missing.append(str(rel))
    assert not missing, f"README's layout map does not name: {', '.join(missing)}"


def test_every_function_level_import_says_why_it_is_not_at_the_top():
    # deferred imports hide the dependency graph; each one must carry its reason (start-up time, an
    # optional dependency) on its line or in the comment just above it
    unexplained = []
    for name, path in _modules().items():
        lines = path.read_text().splitlines()

        def visit(node, in_function):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function:
                    nearby = lines[max(0, child.lineno - 6):child.lineno]
                    if not any("#" in line for line in nearby):
                        unexplained.append(f"{path.relative_to(PACKAGE.parent)}:{child.lineno}")
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

        visit(ast.parse("\n".join(lines)), False)
    assert not unexplained, "function-level imports without a reason: " + ", ".join(unexplained)


def test_the_shared_data_config_and_the_data_modules_defaults_agree():
    # conf/data/base.yaml is what rtk train uses; the Python defaults are what a direct
    # SplitDataModule(...) uses: one set of values, held equal here
    from toolkit.data.base import SplitDataModule
    from toolkit.tasks.base import defaults

    shared = yaml.safe_load((PACKAGE / "conf" / "data" / "base.yaml").read_text())
    python = defaults(SplitDataModule.__init__)
    assert {k: python[k] for k in shared} == shared
