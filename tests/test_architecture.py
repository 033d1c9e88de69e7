"""The one-way flow of the architecture (README, "Layout"), checked on the source: cli → workflows → loading,
inference, diagnostics, render; diagnostics imports none of them (pure math on tensors); loading knows no
metric; render only reads results; cli reaches the library through workflows (results and renderers aside)
and no command imports another command's module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "calibscope"

FORBIDDEN = {
    "diagnostics": {"cli", "loading", "inference", "render", "workflows"},
    "loading": {"cli", "inference", "diagnostics", "render", "workflows"},
    "inference": {"cli", "diagnostics", "render", "workflows"},
    "render": {"cli", "loading", "inference", "workflows"},
    "workflows": {"cli"},
    "integrations": {"cli"},  # training-loop callbacks and trackers: below the command line
}

# what a command module may import: the shared plumbing, errors, the workflows, the renderers, and the
# diagnostics' torch-free defaults (shown in --help); cli/_common also joins torchrun's process group
CLI_ALLOWED = ("calibscope.errors", "calibscope.workflows", "calibscope.render", "calibscope.diagnostics.defaults",
               "calibscope.cli._common")
CLI_COMMON_ALLOWED = CLI_ALLOWED + ("calibscope.inference.distributed",)


def _modules(path: Path) -> set[str]:
    """Every ``calibscope.…`` module ``path`` imports (at any depth: lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("calibscope"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("calibscope")}
    return found


def _imports(path: Path) -> set[str]:
    return {m.split(".")[1] for m in _modules(path) if "." in m}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downstream(layer):
    offences = {str(p.relative_to(PACKAGE)): sorted(_imports(p) & FORBIDDEN[layer])
                for p in sorted((PACKAGE / layer).glob("*.py"))}
    assert not {k: v for k, v in offences.items() if v}, offences


def test_cli_reaches_the_library_through_workflows_and_no_command_imports_another():
    offences = {}
    for p in sorted((PACKAGE / "cli").glob("*.py")):
        if p.name == "__init__.py":  # registers the commands
            continue
        allowed = CLI_COMMON_ALLOWED if p.name == "_common.py" else CLI_ALLOWED
        bad = sorted(m for m in _modules(p) if not any(m == a or m.startswith(a + ".") for a in allowed))
        if bad:
            offences[p.name] = bad
    assert not offences, offences


def test_render_has_no_import_cycle():
    """One direction inside render/: e.g. report_model, html ← report_sections ← report_html (lazy imports
    count: a cycle through a function-level import is still a cycle)."""
    modules = {p.stem: p for p in (PACKAGE / "render").glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for m in _modules(path):
            if m.startswith("calibscope.render."):
                targets.add(m.split(".")[2])
        for node in ast.walk(ast.parse(path.read_text())):  # `from calibscope.render import x as y`
            if isinstance(node, ast.ImportFrom) and node.module == "calibscope.render":
                targets |= {a.name for a in node.names if a.name in modules}
        graph[name] = targets - {name}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, cycles


def test_results_import_nothing_at_run_time():
    """calibscope/results.py is read by both workflows and render: only type-checking imports of calibscope."""
    tree = ast.parse((PACKAGE / "results.py").read_text())
    runtime = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
               and any((getattr(n, "module", None) or a.name).startswith("calibscope") for a in n.names)]
    assert not runtime
