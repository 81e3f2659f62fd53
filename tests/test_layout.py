"""The shape of the source tree: its layers (a lower one never imports a higher one), no import cycles, nothing
outside twin/ reaching into the Engine, no private name crossing a module, run-directory names in one module,
the README's module table and Layout section matching the tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from helpers import ROOT

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
    assert "usertwin.text.render" in graph["usertwin.sequences.prepare"]  # the graph sees real arrows
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
    named = re.findall(r"`((?:data|text|sequences|model|train|twin|eval|serve)/[\w/]*\.?\w*|\w+\.py)`", table)
    assert len(named) >= 10
    for rel in named:
        assert (SRC / "usertwin" / rel).exists(), f"README names src/usertwin/{rel}, which does not exist"


# ---------------------------------------------------------------- layers

# lowest first: a module may import its own layer and those below it
LAYERS = [
    ("ground", ["version", "errors", "atomic", "quiet", "hub", "lock", "seedconfig"]),
    ("config", ["config"]),
    ("run files", ["rundir", "appended"]),
    ("data", ["data"]),
    ("text", ["text"]),
    ("sequences", ["sequences"]),
    ("model", ["model"]),
    ("train", ["train"]),
    ("twin", ["twin"]),
    ("uses of a twin", ["eval", "simulate", "export"]),
    ("serve", ["serve"]),
    ("cli", ["cli"]),
    ("package", [""]),
]


def _layer(module: str) -> int:
    """The layer of a module: that of the longest name of LAYERS it is or lies under."""
    best = None
    for i, (_, names) in enumerate(LAYERS):
        for n in names:
            full = "usertwin" + (f".{n}" if n else "")
            if (module == full or module.startswith(full + ".")) and (best is None or len(full) > best[1]):
                best = (i, len(full))
    assert best is not None, f"{module} is on no layer of tests/test_layout.py: add it"
    return best[0]


def _arrows_up(graph: dict) -> list[str]:
    return [f"{a} -> {b}" for a in sorted(graph) for b in sorted(graph[a]) if _layer(b) > _layer(a)]


def test_every_module_is_on_a_layer_and_none_imports_a_higher_one():
    assert _arrows_up(_graph()) == []


def test_the_layer_check_sees_an_arrow_up():
    assert _arrows_up({"usertwin.data.timeline": {"usertwin.twin.api"}}) == [
        "usertwin.data.timeline -> usertwin.twin.api"]


def _imports_of(package: str) -> set[str]:
    graph = _graph()
    return {b for a, bs in graph.items() if a == package or a.startswith(package + ".") for b in bs}


def _outside(imports: set, allowed: tuple) -> set:
    return {m for m in imports if not any(m == a or m.startswith(a + ".") for a in allowed)}


def test_data_imports_no_text_tokenizer_model_or_twin():
    assert _outside(_imports_of("usertwin.data"), (
        "usertwin.data", "usertwin.config", "usertwin.rundir", "usertwin.errors", "usertwin.atomic",
        "usertwin.quiet", "usertwin.hub", "usertwin.lock", "usertwin.version", "usertwin.seedconfig")) == set()


def test_model_imports_only_config_hub_errors_quiet():
    assert _outside(_imports_of("usertwin.model"), (
        "usertwin.model", "usertwin.config", "usertwin.hub", "usertwin.errors", "usertwin.quiet")) == set()


def test_training_never_imports_a_twin_or_its_evaluation():
    assert {m for m in _imports_of("usertwin.train") if m.startswith(("usertwin.twin", "usertwin.eval"))} == set()


def test_only_twin_reaches_into_the_engine():
    """Outside twin/, a twin is used through Twin (twin/api.py) and twin/targets.py: nobody imports the engine
    module or reads an `engine` attribute."""
    found = []
    for name, path in _modules().items():
        if name.startswith("usertwin.twin"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # (args.engine is simulate's --engine flag, not a twin's)
        found += [f"{path.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                  and n.attr == "engine" and not (isinstance(n.value, ast.Name) and n.value.id == "args")]
        found += [f"{path.relative_to(ROOT)}: imports {m}" for m in _graph()[name] if m == "usertwin.twin.engine"]
    assert found == []


def _private_names(tree) -> set[str]:
    """The private names a module defines: top-level functions, classes and variables, and `self._x` fields."""
    names = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(n.name)
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            names.add(n.id)
        elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
            names.add(n.attr)
    return {x for x in names if x.startswith("_") and not x.startswith("__")}


def _private_crossings(sources: dict[str, str]) -> list[str]:
    trees = {name: ast.parse(text) for name, text in sources.items()}
    defined = {name: _private_names(tree) for name, tree in trees.items()}
    found = []
    for name, tree in trees.items():
        elsewhere = set().union(set(), *[d for other, d in defined.items() if other != name]) - defined[name]
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("usertwin"):
                found += [f"{name}: imports {a.name}" for a in n.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
            elif isinstance(n, ast.Attribute) and n.attr in elsewhere:
                found.append(f"{name}:{n.lineno}: {ast.unparse(n)}")
    return found


def test_no_private_name_crosses_a_module():
    sources = {name: path.read_text(encoding="utf-8") for name, path in _modules().items()}
    assert _private_crossings(sources) == []


def test_the_private_name_check_sees_a_crossing():
    sources = {"a": "class T:\n    def __init__(self):\n        self._by_user = {}\n",
               "b": "from usertwin.a import _helper\n\ndef f(t):\n    return t._by_user\n"}
    assert _private_crossings(sources) == ["b: imports _helper", "b:4: t._by_user"]


def test_readme_layout_lists_every_package_and_top_level_module():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = text[text.index("### Layout"):]
    layout = layout[:layout.index("\n## ")] if "\n## " in layout else layout
    pkg = SRC / "usertwin"
    present = {p.name + "/" for p in pkg.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    present |= {p.name for p in pkg.glob("*.py") if p.name != "__init__.py"}
    missing = sorted(x for x in present if x not in layout)
    gone = sorted(x for x in re.findall(r"^\s{2}(\w+/|\w+\.py)", layout, re.M) if x not in present)
    assert missing == [] and gone == [], f"README Layout: missing {missing}, names what is gone {gone}"


def test_the_tests_mirror_the_package():
    """tests/<folder>/ holds the tests of src/usertwin/<folder>/; the top-level modules' tests stay in tests/."""
    tests = ROOT / "tests"
    folders = {p.parent.name for p in tests.glob("*/test_*.py")}
    assert len(folders) >= 6
    assert sorted(f for f in folders if not (SRC / "usertwin" / f / "__init__.py").is_file()) == []
