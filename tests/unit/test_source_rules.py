"""Rules the source of tqueues keeps, checked on its syntax tree.

Python 3.12 inlines list, set and dict comprehensions into the function that contains them
(PEP 709). In CPython 3.12.1 and 3.13.0, when that function is itself nested and reads a
variable of an enclosing function, a comprehension that uses the same name as its loop
variable leaves that name unbound for the rest of the function: ``job.queue`` after
``[... for job in handed]`` raised UnboundLocalError, and every single-job enqueue on the
PostgreSQL store failed on those Pythons. Python 3.11 is unaffected, so only this rule keeps
the pattern out when the suite runs there.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import tqueues

COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp)
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, *COMPREHENSIONS, ast.GeneratorExp)


def _own_nodes(fn: ast.AST) -> list[ast.AST]:
    """The nodes of ``fn``'s own scope: not inside a nested function, class or comprehension
    (the comprehensions themselves are included)."""
    out: list[ast.AST] = []
    stack = list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop()
        out.append(node)
        if not isinstance(node, SCOPES):
            stack.extend(ast.iter_child_nodes(node))
    return out


def _locals(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    args = fn.args
    names = {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg) if a}
    return names | {n.id for n in _own_nodes(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def shadowed_free_variables(source: str, filename: str = "<source>") -> list[str]:
    """Places where a comprehension in a nested function binds a name that the function also
    reads from an enclosing function."""
    found: list[str] = []

    def visit(node: ast.AST, enclosing: set[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                mine = _locals(child)
                for comp in (n for n in _own_nodes(child) if isinstance(n, COMPREHENSIONS)):
                    inside = {id(n) for n in ast.walk(comp)}
                    for generator in comp.generators:
                        for target in ast.walk(generator.target):
                            if not (isinstance(target, ast.Name) and target.id in enclosing and target.id not in mine):
                                continue
                            if any(isinstance(n, ast.Name) and n.id == target.id and isinstance(n.ctx, ast.Load)
                                   and id(n) not in inside for n in ast.walk(child)):
                                found.append(f"{filename}:{comp.lineno}: {target.id!r}")
                visit(child, enclosing | mine)
            elif isinstance(child, ast.ClassDef):
                visit(child, set())
            else:
                visit(child, enclosing)

    visit(ast.parse(source, filename), set())
    return found


def rule_in_a_fresh_interpreter(files: dict[str, str]) -> list[str]:
    """shadowed_free_variables over ``files`` (name: source), run by a new Python process.

    CPython 3.11's ast.parse keeps a count of its recursion in state shared by the whole
    interpreter, and once other tests have run (test_rethinkdb_queries, here) it can fail with
    "SystemError: AST constructor recursion depth mismatch": a fresh interpreter has no such
    history."""
    done = subprocess.run([sys.executable, __file__], input=json.dumps(files), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_rule_finds_a_comprehension_that_rebinds_a_variable_of_an_enclosing_function() -> None:
    source = (
        "def outer(job):\n"
        "    async def op():\n"
        "        handed = []\n"
        "        events = [(1, job) for job in handed]\n"
        "        return [(job.queue, kind) for kind, _ in events]\n"
        "    return op\n"
        "def fine(job):\n"
        "    def op(items):\n"
        "        return [job for job in items]   # never reads the outer job\n"
        "    return op\n")
    assert rule_in_a_fresh_interpreter({"<source>": source}) == ["<source>:4: 'job'"]


def test_no_comprehension_in_tqueues_rebinds_a_variable_its_function_reads_from_an_enclosing_one() -> None:
    root = Path(tqueues.__file__).parent
    files = {str(path.relative_to(root)): path.read_text(encoding="utf-8") for path in sorted(root.rglob("*.py"))}
    assert len(files) > 30
    assert rule_in_a_fresh_interpreter(files) == []


if __name__ == "__main__":
    sources = json.load(sys.stdin)
    print(json.dumps([place for name, text in sources.items() for place in shadowed_free_variables(text, name)]))
