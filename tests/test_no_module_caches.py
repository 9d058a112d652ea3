"""No module-level caches in harness/: every in-memory memo belongs to the lab (Lab.memo,
harness/cache.py Memo), so one session's memory is bounded and owned in one place."""
from __future__ import annotations

import ast
from pathlib import Path

HARNESS = Path(__file__).resolve().parent.parent / "harness"

# Module-level containers that are not caches: filled once, never memoising a computation.
# (A non-empty literal table, such as ``FUSION_CODE = {...}``, is a constant and not flagged.)
ALLOWED = {
    "runtimes/__init__.py": {"_overrides"},  # the runtime registry's test-registered entries
    # the numba-compiled kernel, made on first use (importing numba costs ~0.3 s): code, no results
    "quant/histogram.py": {"_KERNEL"},
}
CONTAINER_CALLS = {"dict", "set", "list", "defaultdict", "OrderedDict", "BoundedCache", "Memo", "WeakKeyDictionary",
                   "WeakValueDictionary", "deque", "Counter"}
CACHE_DECORATORS = {"lru_cache", "cache"}


def _call_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Subscript):  # pytest.StashKey[dict]()
        node = node.value
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _module_state(path: Path) -> list[tuple[int, str, str]]:
    """(line, name, what) of every module-level empty container (literal or constructor call, the
    shape a cache starts in) and every memoising decorator (functools.lru_cache / cache)."""
    found = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            v = node.value
            what = None
            if isinstance(v, ast.Dict) and not v.keys or isinstance(v, (ast.List, ast.Set)) and not v.elts:
                what = f"empty {type(v).__name__.lower()}"
            elif isinstance(v, ast.Call) and _call_name(v.func) in CONTAINER_CALLS:
                what = f"{_call_name(v.func)}()"
            if what:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    found.append((node.lineno, ast.unparse(t), what))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for d in node.decorator_list:
                name = _call_name(d.func if isinstance(d, ast.Call) else d)
                if name in CACHE_DECORATORS:
                    found.append((node.lineno, node.name, f"@{name}"))
    return found


def test_no_module_level_cache_in_harness():
    offenders = []
    for path in sorted(HARNESS.rglob("*.py")):
        rel = path.relative_to(HARNESS).as_posix()
        allowed = ALLOWED.get(rel, set())
        offenders += [f"harness/{rel}:{line} {name} ({what})" for line, name, what in _module_state(path)
                      if name not in allowed]
    assert not offenders, ("module-level state in harness/ (memoise in the lab: Lab.memo(kind, key, build); "
                           "a container that is no cache goes in ALLOWED here):\n  " + "\n  ".join(offenders))


def test_the_scan_finds_the_kinds_of_cache_it_forbids(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from functools import lru_cache\nimport functools\n_A = {}\n_B: dict[str, int] = {}\n"
                   "_C = BoundedCache(2, len)\n_D = weakref.WeakKeyDictionary()\nTABLE = {'a': 1}\n"
                   "@lru_cache(maxsize=None)\ndef f(x): return x\n@functools.cache\ndef g(x): return x\n")
    names = {name for _, name, _ in _module_state(src)}
    assert names == {"_A", "_B", "_C", "_D", "f", "g"}  # TABLE: a constant

