"""The shape of the source tree: no import cycles, run-directory names in one module, the README's module
table naming modules that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
RUN_FILES = {"config.yaml", "data_summary.json", "training_samples_preview.txt", "logs.jsonl",
             "tensorboard", "checkpoints", "best", "summary.json", "metrics.json", "baselines.json", "twin.json",
             "trainer_state.json"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "usertwin").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imported(name: str, node: ast.AST, modules: dict) -> set[str]:
    """usertwin modules an import statement loads (the module itself, or `from pkg import mod`)."""
    targets = []
    if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        # `from pkg import mod` loads mod (the package's own __init__ only runs first); `from mod import name`
        # loads mod
        subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
        targets = subs or [node.module]
    found = set()
    for t in targets:
        while t and t not in modules:
            t = t.rpartition(".")[0]
        if t and t != name:
            found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # every import, also those inside functions (deferred to keep a command's start light): a deferred
        # import that closes a loop is a cycle all the same
        graph[name] = set().union(set(), *[_imported(name, n, modules) for n in ast.walk(tree)])
    return graph


def _cycle(graph: dict) -> list | None:
    state, stack = {}, []

    def visit(v):
        state[v] = "open"
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == "open":
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = "done"
        stack.pop()
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_no_import_cycles():
    graph = _graph()
    assert "usertwin.text.render" in graph["usertwin.data.prepare"]  # the graph sees real arrows
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_only_rundir_spells_run_directory_file_names():
    spelled = []
    for name, path in _modules().items():
        if name == "usertwin.rundir":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # a key of a dict (summary["best"]) names a field, not a file
        keys = {id(n.slice) for n in ast.walk(tree) if isinstance(n, ast.Subscript)}
        keys |= {id(k) for n in ast.walk(tree) if isinstance(n, ast.Dict) for k in n.keys if k is not None}
        for node in ast.walk(tree):
            if id(node) not in keys and isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                    node.value in RUN_FILES or re.fullmatch(r"predictions-\w*\.jsonl|step-\d*|\.tmp-.*", node.value)):
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not spelled, "use usertwin.rundir.RunDir:\n" + "\n".join(spelled)


def test_readme_module_table_names_modules_that_exist():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| stage | command | module"):text.index("### Layout")]
    named = re.findall(r"`((?:data|text|train|eval|serve)/[\w/]*\.?\w*|\w+\.py)`", table)
    assert len(named) >= 10
    for rel in named:
        assert (SRC / "usertwin" / rel).exists(), f"README names src/usertwin/{rel}, which does not exist"
