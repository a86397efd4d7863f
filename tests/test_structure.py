"""The package's structure, read from the source: imports run one way (no circle, function-local
imports included), config.py is a leaf, store/ needs no trainer or model, and launchers import no
JAX at import time."""

import ast
import pathlib
import re
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "gptjax"
LAUNCH = PACKAGE.parent / "launch"


def _module_name(path: pathlib.Path) -> str:
    if path.is_relative_to(LAUNCH):
        parts = ("gptjax", "launch", *path.relative_to(LAUNCH).with_suffix("").parts)
    else:
        parts = ("gptjax", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the gptjax modules it imports anywhere in its source (functions included)."""
    files = {_module_name(p): p for root in (PACKAGE, LAUNCH) for p in root.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                    node.module.split(".")[0] == "gptjax":
                for alias in node.names:  # `from gptjax.store import paths` names a module
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in files else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name in files}
        graph[name] = {t for t in targets if t != name and t in files}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_every_kind_of_import():
    # The rules below mean something only if the graph reads top-level, function-local and
    # `from gptjax import x` imports, and module-in-package names.
    graph = import_graph()
    assert "gptjax.presets" in graph["gptjax.config_files"]  # function-local
    assert "gptjax.store.paths" in graph["gptjax.store.checkpoint"]  # from gptjax.store import paths
    assert "gptjax.config" in graph["gptjax.presets"]  # from gptjax.config import ...
    assert "gptjax.launch.common" in graph["gptjax.launch.local"]


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_cycles_finds_a_circle_and_nothing_else():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_config_is_a_leaf():
    assert import_graph()["gptjax.config"] == set()


@pytest.mark.parametrize("package, forbidden", [
    ("gptjax.store", ("gptjax.training", "gptjax.model", "gptjax.interop", "gptjax.finetune")),
    ("gptjax.data", ("gptjax.training", "gptjax.model", "gptjax.interop", "gptjax.finetune")),
    ("gptjax.runtime", ("gptjax.training", "gptjax.model", "gptjax.interop", "gptjax.finetune")),
    # The model names logical axes and takes its kernels as a value: it needs no mesh or device.
    ("gptjax.model", ("gptjax.runtime", "gptjax.training", "gptjax.store", "gptjax.interop", "gptjax.finetune")),
])
def test_lower_layers_import_nothing_above_them(package, forbidden):
    graph = import_graph()
    upward = [f"{a} -> {b}" for a in sorted(graph) if a == package or a.startswith(package + ".")
              for b in sorted(graph[a]) if b.startswith(forbidden)]
    assert upward == []


def test_the_model_knows_nothing_of_lora():
    # LoRA is a function of parameters (merge) or a module swap (attach) in finetune/lora.py.
    mentions = [f"{p.name}:{i}" for p in (PACKAGE / "model").glob("*.py")
                for i, line in enumerate(p.read_text().splitlines(), 1) if "lora" in line.lower()]
    assert mentions == []


MUTATORS = {"add", "append", "extend", "insert", "update", "setdefault", "pop", "popitem", "clear", "discard",
            "remove"}


def module_state_writes(source: str) -> list[int]:
    """Lines that write module-level state: a `global` statement, or a mutation (method call,
    item assignment or deletion) of a name bound at module level."""
    tree = ast.parse(source)
    names = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
             for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            lines.append(node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS
              and isinstance(node.func.value, ast.Name) and node.func.value.id in names):
            lines.append(node.lineno)
        elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, (ast.Store, ast.Del))
              and isinstance(node.value, ast.Name) and node.value.id in names):
            lines.append(node.lineno)
    return lines


def test_module_state_writes_finds_each_kind():
    source = "A = set()\nB = {}\nC = []\ndef f():\n    global D\n    A.add(1)\n    B['k'] = 2\n    C.append(3)\n"
    assert module_state_writes(source) == [5, 6, 7, 8]
    assert module_state_writes("T = {'a': 1}\ndef f(x):\n    x.add(1)\n    return T['a']\n") == []


def test_the_model_keeps_no_module_state():
    """Tracing reads arguments, not globals (STYLE.md 16): nothing in model/ writes module-level
    state (a cache, a set of warnings said), which a later trace would read."""
    found = [f"{p.name}:{line}" for p in sorted((PACKAGE / "model").glob("*.py"))
             for line in module_state_writes(p.read_text())]
    assert found == []


def test_launchers_import_no_jax():
    code = ("import sys, gptjax.launch; "
            "print(sorted(m for m in ('jax', 'orbax.checkpoint', 'flax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def layout_entries() -> dict[str, str]:
    """The code layout page's block (docs/layout.md): each entry (`gptjax/`'s files and subpackages,
    top-level folders) and its text, continuation lines included."""
    block = (PACKAGE.parent / "docs" / "layout.md").read_text()
    block = block[block.index("```\n") + 4:]
    entries, current = {}, None
    for line in block[:block.index("```")].splitlines():
        head = line.split()[0] if line.strip() else ""
        if not line.startswith(" " * 6) and head.endswith(("/", ".py")):  # an entry, not a continuation
            current = ("gptjax/" if line.startswith("  ") else "") + head
            entries[current] = line[len(line) - len(line.lstrip()) + len(head):]
        elif current is not None:
            entries[current] += " " + line.strip()
    return entries


def test_the_layout_page_matches_the_tree():
    """Every module and subpackage is named in the code layout page, and everything named exists."""
    entries = layout_entries()
    tree = {f"gptjax/{p.name}" for p in PACKAGE.glob("*.py")} | {f"gptjax/{p.name}/" for p in PACKAGE.iterdir()
                                                                 if (p / "__init__.py").exists()}
    listed = {e for e in entries if e.startswith("gptjax/") and e != "gptjax/"}
    assert listed == tree
    unnamed = [f"{pkg}{p.stem}" for pkg in sorted(listed) if pkg.endswith("/")
               for p in sorted((PACKAGE.parent / pkg).glob("*.py"))
               if p.stem != "__init__" and not re.search(rf"\b{p.stem}\b", entries[pkg])]
    unnamed += [f"launch/{p.stem}" for p in sorted(LAUNCH.glob("*.py"))
                if p.stem != "__init__" and not re.search(rf"\b{p.stem}\b", entries["launch/"])]
    assert unnamed == []
