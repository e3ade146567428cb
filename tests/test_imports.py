"""The house rules of the import graph, read from the sources (nothing runs).

`python -m tests.test_imports` prints the graph.
"""
import ast
import glob
import os

from tests import conftest

PACKAGES = ("ops", "tfrecord_tools", "distributed", "benchmarks")
SCRIPTS = ("nextitnet_pretrain", "peterrec_finetune")


def _modules():
  """{module name: source path} of the project's own modules."""
  root = conftest.PROJECT_ROOT
  paths = glob.glob(os.path.join(root, "*.py"))
  for package in PACKAGES:
    paths += glob.glob(os.path.join(root, package, "*.py"))
  return {os.path.relpath(path, root)[:-3].replace(os.sep, "."): path
          for path in paths}


def import_graph():
  """{module: sorted project modules it imports}, and the names it takes
  from each ({(module, imported module): [names]})."""
  modules = _modules()
  graph, names = {}, {}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    edges = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        edges.update(a.name for a in node.names if a.name in modules)
      elif isinstance(node, ast.ImportFrom) and node.module:
        for alias in node.names:
          full = "%s.%s" % (node.module, alias.name)
          target = full if full in modules else node.module
          if target in modules:
            edges.add(target)
            names.setdefault((module, target), []).append(alias.name)
    edges.discard(module)
    graph[module] = sorted(edges)
  return graph, names


def _cycles(graph):
  cycles, state = [], {}

  def visit(module, path):
    state[module] = "open"
    for target in graph[module]:
      if state.get(target) == "open":
        cycles.append(path[path.index(target):] + [target])
      elif target not in state:
        visit(target, path + [target])
    state[module] = "done"

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])
  return cycles


def test_no_import_cycle():
  graph, _ = import_graph()
  assert _cycles(graph) == []


def test_ops_is_graph_code_only():
  graph, _ = import_graph()
  for module, targets in graph.items():
    if module.startswith("ops."):
      assert all(t.startswith("ops.") for t in targets), (module, targets)


def test_only_the_tables_and_tests_import_the_scripts():
  graph, _ = import_graph()
  for module, targets in graph.items():
    if module in ("reproduce_tables",) or module.startswith("distributed."):
      continue
    for script in SCRIPTS:
      if script in targets:
        # Benchmarks time the scripts' public builders, nothing private.
        assert module.startswith("benchmarks."), (module, script)


def test_serving_and_libraries_do_not_import_scripts():
  graph, _ = import_graph()
  for module in ("serving", "finetuning", "training_utils", "data_loader",
                 "baselines", "script_flags"):
    assert not set(graph[module]) & set(SCRIPTS), (module, graph[module])


def _private_uses(path, modules):
  """Private names of project modules that the source at `path` uses."""
  with open(path) as f:
    tree = ast.parse(f.read())
  aliases, used = {}, []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      aliases.update((a.asname or a.name, a.name) for a in node.names
                     if a.name in modules)
    elif isinstance(node, ast.ImportFrom) and node.module:
      for alias in node.names:
        full = "%s.%s" % (node.module, alias.name)
        if full in modules:
          aliases[alias.asname or alias.name] = full
        elif node.module in modules and alias.name.startswith("_"):
          used.append("%s.%s" % (node.module, alias.name))
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and
        isinstance(node.value, ast.Name) and node.value.id in aliases and
        node.attr.startswith("_") and not node.attr.startswith("__")):
      used.append("%s.%s" % (aliases[node.value.id], node.attr))
  return sorted(set(used))


def test_no_module_uses_private_names_of_another():
  modules = _modules()
  uses = {module: _private_uses(path, modules)
          for module, path in modules.items()}
  assert {module: names for module, names in uses.items() if names} == {}


if __name__ == "__main__":
  for name, imports in sorted(import_graph()[0].items()):
    print("%s -> %s" % (name, ", ".join(imports) or "-"))
