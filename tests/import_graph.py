"""A plain scan of the package's import graph (no module is imported).

`scan()` reads every `cfbi_jax/**/*.py` with `ast` and returns its
modules and import edges: `import cfbi_jax.x`, `from cfbi_jax import x`
and `from cfbi_jax.x import y`, at any level of the file (module level,
inside functions, under `if __name__ == '__main__':`). An edge records
whether it is a module-level import.

`summary()` gives the figures the structure is judged by:

* modules and edges;
* cycles: strongly connected groups of more than one module over all
  edges (a deferred import can close a cycle as well as a top-level one);
* layers: the longest chain of imports (any level) below a module, plus
  one, with the edges between two modules of one cycle left out (a module
  that imports nothing of the package is layer 0);
* upward imports: edges inside a cycle to the module of the higher layer
  (the import that closes the cycle, e.g. a `__main__` block importing the
  command-line module that imports it).

`python tests/import_graph.py` prints them. `tests/test_structure.py`
holds the package to no cycle and no upward import.
"""

import ast
import os
import sys
from typing import Dict, List, Set, Tuple

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
PACKAGE = 'cfbi_jax'


def _module_name(path: str, root: str) -> str:
  rel = os.path.relpath(path, root)[: -len('.py')].split(os.sep)
  if rel[-1] == '__init__':
    rel = rel[:-1]
  return '.'.join(rel)


def scan(root: str = ROOT) -> Tuple[Set[str], List[Tuple[str, str, bool]]]:
  """`(modules, [(importer, imported, at module level)])`."""
  files = []
  for folder, _, names in os.walk(os.path.join(root, PACKAGE)):
    files += [os.path.join(folder, n) for n in names if n.endswith('.py')]
  modules = {_module_name(f, root) for f in files}
  edges = set()
  for path in files:
    source = _module_name(path, root)
    with open(path) as f:
      tree = ast.parse(f.read())
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        targets = [f'{node.module}.{a.name}' for a in node.names]
        targets = [t if t in modules else node.module for t in targets]
      for target in targets:
        while target and target not in modules:
          target = target.rpartition('.')[0]
        if target and target.startswith(PACKAGE) and target != source:
          edges.add((source, target, id(node) in top))
  # An import at module level and a deferred one of the same module count
  # once, as module level.
  best = {}
  for u, v, level in edges:
    best[(u, v)] = best.get((u, v), False) or level
  return modules, sorted((u, v, t) for (u, v), t in best.items())


def _components(modules, edges) -> List[Set[str]]:
  """Strongly connected components (Tarjan), over all edges."""
  graph = {m: [] for m in modules}
  for u, v, _ in edges:
    graph[u].append(v)
  index, low, stack, on, out = {}, {}, [], set(), []
  sys.setrecursionlimit(10000)

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = set()
      while True:
        w = stack.pop()
        on.discard(w)
        comp.add(w)
        if w == v:
          break
      out.append(comp)

  for m in sorted(modules):
    if m not in index:
      visit(m)
  return out


def summary(root: str = ROOT) -> Dict[str, object]:
  """The figures of the module docstring."""
  modules, edges = scan(root)
  cycles = [sorted(c) for c in _components(modules, edges) if len(c) > 1]
  group = {m: i for i, c in enumerate(cycles) for m in c}
  same = lambda u, v: u in group and group.get(v) == group[u]
  below = {
      m: [v for u, v, _ in edges if u == m and not same(u, v)] for m in modules
  }
  layer: Dict[str, int] = {}

  def depth(m):
    if m not in layer:
      layer[m] = 1 + max((depth(v) for v in below[m]), default=-1)
    return layer[m]

  for m in modules:
    depth(m)
  upward = [(u, v) for u, v, _ in edges if same(u, v) and layer[v] > layer[u]]
  return {
      'modules': len(modules),
      'edges': len(edges),
      'layers': 1 + max(layer.values()),
      'cycles': cycles,
      'upward': upward,
  }


if __name__ == '__main__':
  figures = summary()
  print(
      f"modules {figures['modules']}, import edges {figures['edges']}, "
      f"layers {figures['layers']}, cycles {len(figures['cycles'])}, "
      f"upward imports {len(figures['upward'])}"
  )
  for cycle in figures['cycles']:
    print('  cycle:', ' <-> '.join(cycle))
  for u, v in figures['upward']:
    print(f'  upward: {u} -> {v}')
