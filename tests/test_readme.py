"""The README's commands run as written, in order, on a copy of the project.

Every ```bash block of the README carries a marker comment just before it:
`run` (executed, in README order, in one shell), `flags` (long runs: each
`python` command only parses its flags, with absl's --only_check_args) or
`run.sh` (the two entry points, which are what CI itself runs).
"""
import os
import re
import shutil
import subprocess
import sys

import finetuning
from tests import conftest

README = os.path.join(conftest.PROJECT_ROOT, "README.md")
BLOCK_RE = re.compile(r"<!-- readme-test: ([\w.]+) -->\n```bash\n(.*?)```",
                      re.S)
# `python` inside the blocks: this interpreter; in `flags` blocks it only
# parses the command line (inserted before absl's `--`, which ends flags).
PYTHON_SHIMS = {
    "run": 'python() { "$PY" "$@"; }',
    "flags": 'python() { if [ "$1" = -m ]; then "$PY" -m "$2" '
             '--only_check_args "${@:3}"; else "$PY" "$1" --only_check_args '
             '"${@:2}"; fi; }',
}
IGNORED = (".git", ".venv", "output", "__pycache__", ".pytest_cache")


def _readme():
  with open(README) as f:
    return f.read()


def readme_blocks():
  """[(marker, block text)] in README order."""
  return BLOCK_RE.findall(_readme())


def test_every_bash_block_says_how_it_is_tested():
  text = _readme()
  blocks = readme_blocks()
  assert len(blocks) == text.count("```bash")
  assert {marker for marker, _ in blocks} <= {"run", "flags", "run.sh"}
  # A guide, not a notebook: about a third of its first 891 lines.
  assert len(text.splitlines()) < 340


def test_run_sh_blocks_name_its_commands():
  with open(os.path.join(conftest.PROJECT_ROOT, "run.sh")) as f:
    run_sh = f.read()
  for marker, block in readme_blocks():
    if marker != "run.sh":
      continue
    for line in block.splitlines():
      command = line.split("#")[0].split()
      assert command[:2] == ["bash", "run.sh"], line
      assert "\n  %s)" % command[2] in run_sh, line


def test_method_table_is_finetunings():
  rows = re.findall(r"^\| `(\w+)` \| (yes|no) \| (restored|random) \| "
                    r"(.+?) \|$", _readme(), re.M)
  assert [row[0] for row in rows] == list(finetuning.METHOD_TABLE)
  for name, patches, backbone, trains in rows:
    method = finetuning.METHOD_TABLE[name]
    assert (patches == "yes") == method.patches, name
    assert (backbone == "restored") == method.restores_backbone, name
    assert trains.split(" + ") == list(method.trains), name


def _project_copy(root):
  """A copy of the project at root/project, with root/shared beside it."""
  project = os.path.join(root, "project")
  shutil.copytree(conftest.PROJECT_ROOT, project,
                  ignore=shutil.ignore_patterns(*IGNORED))
  os.symlink(os.path.dirname(conftest.SHARED_DATA_DIR),
             os.path.join(root, "shared"))
  return project


def test_commands_run_in_order_as_written(tmp_path):
  conftest.require_path(conftest.DEMO_DIR)
  conftest.require_path(os.path.join(conftest.SHARED_DATA_DIR,
                                     "movielens-1m"))
  project = _project_copy(str(tmp_path))
  script = ["set -euo pipefail"]
  for marker, block in readme_blocks():
    if marker in PYTHON_SHIMS:
      script.append("%s\n%s" % (PYTHON_SHIMS[marker], block))
  env = dict(os.environ, PY=sys.executable, TF_CPP_MIN_LOG_LEVEL="2",
             PATH=os.path.dirname(sys.executable) + os.pathsep +
             os.environ.get("PATH", ""))
  result = subprocess.run(["bash", "-c", "\n".join(script)], cwd=project,
                          env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
  with open(os.path.join(str(tmp_path), "readme_commands.log"), "w") as f:
    f.write(result.stdout)
  assert result.returncode == 0, result.stdout[-4000:]
  outputs = os.path.join(project, "output")
  # What the guide says each step leaves behind.
  for path in ("data/pretrain/metadata.json", "runs/pretrain/metrics.json",
               "runs/pretrain/model_config.json", "data/task/metadata.json",
               "runs/peterrec/metrics.json", "runs/peterrec/task_patch",
               "runs/peterrec/saved_model/saved_model.pb",
               "runs/peterrec/recommendations.jsonl",
               "runs/peterrec/metrics_task_patch.json",
               "runs/authors_nextitnet/predictions.tsv",
               "runs/fineall/predictions.jsonl", "data/ml-1m/pretrain.csv",
               "data/afk/finetune_coldstart.csv"):
    assert os.path.exists(os.path.join(outputs, path)), path
  assert "Test metrics of fineall" in result.stdout
  # The flags-only blocks trained nothing.
  assert not os.path.exists(os.path.join(outputs, "runs/cluster"))
  assert not os.path.exists(os.path.join(outputs, "tables"))
