"""The package's shape (docs/design.md): an import graph without cycles or upward imports,
and function-level imports only for optional heavy dependencies."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "idlm_jax"

# layer of each top-level part: a module may import its own part and lower layers only
LAYERS = {
    "fields": 0, "rng": 0,
    "data": 1, "models": 1, "diffusion": 1,
    "decoding": 2,
    "objectives": 3,
    "train": 4,
    "evals": 5,
    "config": 6, "export": 7, "convert": 7, "main": 8,
}
# the bottom parts share a layer but import each other in one direction only
BOTTOM_ORDER = ("data", "models", "diffusion")
# function-level imports allowed: optional or heavy third-party modules (with a reason)
LAZY_OK = {"tensorflow", "tensorflow_datasets", "pyarrow", "datasets", "huggingface_hub",
           "matplotlib", "torch"}


def _modules():
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    yield ".".join(parts), path


def _imports(name: str, path: pathlib.Path):
  """(imported idlm_jax module, lineno, at module level?) for every import in the file."""
  tree = ast.parse(path.read_text())
  functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
  inner = {id(s) for f in functions for s in ast.walk(f)}
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + [base])
      targets = [base] + [f"{base}.{a.name}" for a in node.names]
    else:
      continue
    for target in targets:
      yield target, node.lineno, id(node) not in inner


def _part(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "idlm_jax"


def _graph():
  known = dict(_modules())
  edges = {}
  for name, path in known.items():
    edges[name] = {t for t, _, top in _imports(name, path) if t in known and t != name}
  return known, edges


def test_no_upward_imports():
  known, edges = _graph()
  bad = []
  for src, targets in edges.items():
    a = _part(src)
    if a == "idlm_jax":
      continue
    for dst in targets:
      b = _part(dst)
      if b == "idlm_jax" or a == b:
        continue
      if LAYERS[b] > LAYERS[a]:
        bad.append(f"{src} imports {dst} (layer {b} above {a})")
      elif LAYERS[a] == LAYERS[b] and BOTTOM_ORDER.index(b) > BOTTOM_ORDER.index(a):
        bad.append(f"{src} imports {dst} ({b} is above {a} among {BOTTOM_ORDER})")
  assert not bad, "\n".join(bad)


def test_no_import_cycles():
  _, edges = _graph()
  state, stack, cycles = {}, [], []

  def visit(node):
    state[node] = 1
    stack.append(node)
    for nxt in sorted(edges[node]):
      if state.get(nxt) == 1:
        cycles.append(stack[stack.index(nxt):] + [nxt])
      elif nxt not in state:
        visit(nxt)
    stack.pop()
    state[node] = 2

  for node in sorted(edges):
    if node not in state:
      visit(node)
  # a package __init__ importing its own submodules, which import the package, is not a cycle
  real = [c for c in cycles if not all(c[0].startswith(n) or n.startswith(c[0]) for n in c)]
  assert not real, "\n".join(" -> ".join(c) for c in real)


@pytest.mark.parametrize("name,path", list(_modules()))
def test_function_level_imports_are_optional_dependencies(name, path):
  bad = [f"{path.name}:{line} imports {t} inside a function"
         for t, line, top in _imports(name, path)
         if not top and t.split(".")[0] not in LAZY_OK]
  assert not bad, "\n".join(bad)
