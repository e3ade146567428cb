"""reproduce_tables end to end on a tiny demo world: the table's shape, mean ±
sd in every cell, the learning rate chosen on validation, the calibration,
GRec, [CLS]-at-start and few-label rows, the figures, and a rerun that skips
the runs already done."""
import json
import os
import re
import sys

from absl import flags
import pytest

import reproduce_tables as rt
from tests import conftest

TINY_WORLD = {"num_groups": 2, "items_per_group": 12, "source_length": 6,
              "num_pretrain_users": 120, "num_finetune_users": 40,
              "targets_per_group": 5, "max_targets": 2}
TINY_PRETRAIN = {"channels": 8, "dilations": [1, 2], "train_batch_size": 8,
                 "num_train_steps": 3}
TINY_FINETUNE = {"num_train_steps": 4, "train_batch_size": 8,
                 "eval_batch_size": 64, "eval_every_steps": 4,
                 "validation_fraction": 0.25}
METHODS = ["peterrec_serial", "grec_peterrec_parallel", "peterrec_cls_start",
           "fineall"]
LEARNING_RATES = [0.01, 0.001]
SEEDS = [1, 2]


def reproduce(output_dir, log, **overrides):
  options = dict(demo_options=TINY_WORLD, pretrain_overrides=TINY_PRETRAIN,
                 finetune_overrides=TINY_FINETUNE, methods=METHODS,
                 learning_rates=LEARNING_RATES, seeds=SEEDS,
                 few_label_fractions=[0.5], log=log.append)
  options.update(overrides)
  return rt.reproduce("demo", output_dir, **options)


def parse_table(text):
  """The first markdown table's rows as lists of cells (header first)."""
  lines = []
  for line in text.splitlines():
    if line.startswith("|"):
      lines.append(line)
    elif lines:
      break
  rows = [[c.strip() for c in l.strip("|").split("|")] for l in lines]
  return rows[0], rows[2:]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
  output_dir = str(tmp_path_factory.mktemp("tables"))
  log = []
  results = reproduce(output_dir, log)
  return output_dir, results, log


def test_table_shape_and_numbers(first_run):
  output_dir, results, _ = first_run
  with open(os.path.join(output_dir, rt.TABLE_FILE)) as f:
    text = f.read()
  header, rows = parse_table(text)
  # Demo tasks: group (accuracy), coldstart (MRR@5, HR@5); + trainable %.
  assert header == ["method", "group Acc", "coldstart MRR@5",
                    "coldstart HR@5", "trainable %"]
  assert [r[0] for r in rows] == (list(rt.CALIBRATION_ROWS.values()) +
                                  [rt.METHOD_ROWS[m].label for m in METHODS])
  for row in rows:
    assert len(row) == len(header)
    for cell in row[1:-1]:
      mean, sd = [float(x) for x in cell.split(" ± ")]
      assert 0.0 <= mean <= 1.0 and sd >= 0.0, row
  fineall = rows[[r[0] for r in rows].index("FineAll")]
  assert fineall[-1] == "100.00"
  assert "Few labels: 0.5 of the training users" in text
  # Progress: every run logged as done/total with an ETA; the total is
  # 2 tasks x (4 rows x (2 rates + 1 more seed) + 2 few-label rows x 2 seeds).
  _, _, log = first_run
  progress = [l for l in log if re.match(r"  \[\d+/32, [\d.]+ min, ETA ", l)]
  assert len(progress) == 32, log
  for name in ("convergence.png", "few_labels.png"):
    with open(os.path.join(output_dir, name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_learning_rate_chosen_on_validation_and_seeds_summarized(first_run):
  output_dir, results, _ = first_run
  with open(os.path.join(output_dir, rt.RESULTS_FILE)) as f:
    stored = json.load(f)
  assert stored["table_markdown"] == results["table_markdown"]
  for task in ("group", "coldstart"):
    records = stored["rows"][task]
    assert sorted(records) == sorted(list(rt.CALIBRATION_ROWS) + METHODS)
    for method in METHODS:
      record = records[method]
      grid = record["learning_rate_grid"]
      assert sorted(float(lr) for lr in grid) == sorted(LEARNING_RATES)
      best = max(grid.values())
      assert grid["%g" % record["chosen_learning_rate"]] == best
      assert record["seeds"] == SEEDS
      for cell in record["test"].values():
        assert len(cell["values"]) == 2
        assert cell["mean"] == pytest.approx(sum(cell["values"]) / 2)
        assert cell["sd"] == pytest.approx(
            abs(cell["values"][0] - cell["values"][1]) / 2 ** 0.5)
      # Each run tested its best validation checkpoint.
      for history, step in zip(record["validation_histories"],
                               record["best_steps"]):
        key = record["validation_metric"]
        assert max(h["metrics"][key] for h in history) == next(
            h["metrics"][key] for h in history if h["step"] == step)
    # The few-label points train on fewer users than the full ones.
    for series in stored["few_labels"][task].values():
      users = {p["fraction"]: p["num_train_users"] for p in series}
      assert users[0.5] < users[1.0]


def test_rerun_skips_done_runs_and_redoes_changed_ones(first_run):
  output_dir, results, _ = first_run
  metrics_file = os.path.join(output_dir, "cells", "group", "fineall",
                              "lr0.01-seed1", "metrics.json")
  before = os.path.getmtime(metrics_file)
  log = []
  again = reproduce(output_dir, log)
  assert "pretraining nextitnet" not in " ".join(log)
  assert not [l for l in log if re.search(r"\(\d+ s\)$", l)]
  assert again["table_markdown"] == results["table_markdown"]
  assert os.path.getmtime(metrics_file) == before

  # Another fine-tuning budget for one method: only its runs run again.
  log = []
  reproduce(output_dir, log, methods=["fineall"], few_label_fractions=[],
            finetune_overrides=dict(TINY_FINETUNE, num_train_steps=6))
  assert not [l for l in log if "(done already)" in l]
  with open(metrics_file) as f:
    assert json.load(f)["validation"]["history"][-1]["step"] == 6


def test_command_line_flags_parse():
  flag_values = flags.FlagValues()
  rt.define_flags(flag_values)
  flag_values(["reproduce_tables.py", "--dataset=custom",
               "--pretrain_csv=p.csv", "--finetune_csv=a.csv,g.csv",
               "--classification_tasks=g", "--finetune_steps=7"])
  assert flag_values.finetune_csv == ["a.csv", "g.csv"]
  assert flag_values.finetune_steps == 7
  assert flag_values.methods is None  # the dataset profile's rows
  with pytest.raises(ValueError, match="are not among the tasks"):
    rt.prepare_csvs("custom", "/nonexistent", pretrain_csv="p.csv",
                    finetune_csvs=["a.csv"], classification_tasks=["g"])


def test_one_seed_shows_no_standard_deviation():
  task = rt.Task("gender", "classification", "unused.csv")
  def records(values):
    return {"gender": {"fineall": {
        "label": "FineAll", "trainable_percent": 100.0,
        "test": rt.summarize_seeds([{"accuracy": v} for v in values],
                                   ["accuracy"])}}}
  one = rt.format_table([task], ["fineall"], records([0.75]))
  assert one.splitlines()[-1] == "| FineAll | 0.7500 | 100.00 |"
  two = rt.format_table([task], ["fineall"], records([0.7, 0.8]))
  assert two.splitlines()[-1] == "| FineAll | 0.7500 ± 0.0707 | 100.00 |"


def test_same_configuration_treats_missing_keys_as_defaults():
  defaults = {"lr": 0.001, "new_option": False}
  recorded = {"lr": 0.001, "method": "peterrec"}  # before new_option existed
  assert rt.same_configuration(recorded, dict(recorded, new_option=False),
                               defaults)
  assert not rt.same_configuration(recorded, dict(recorded, new_option=True),
                                   defaults)
  assert not rt.same_configuration(recorded, dict(recorded, lr=0.01),
                                   defaults)
  assert not rt.same_configuration(recorded, {"lr": 0.001}, defaults)
  assert not rt.same_configuration(None, recorded, defaults)


_ORPHAN_PROGRAM = """
import concurrent.futures, multiprocessing, os, sys, time
import reproduce_tables

def work(path):
  with open(path, "w") as f:
    f.write(str(os.getpid()))
  time.sleep(120)

if __name__ == "__main__":
  pool = concurrent.futures.ProcessPoolExecutor(
      1, mp_context=multiprocessing.get_context("spawn"),
      initializer=reproduce_tables._die_with_parent)
  pool.submit(work, sys.argv[1])
  time.sleep(120)
"""


def _alive(pid):
  """Running (a zombie nobody reaps counts as dead)."""
  try:
    with open("/proc/%d/stat" % pid) as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


def test_workers_die_with_the_table_process(tmp_path):
  """A killed table leaves no worker running its queued runs."""
  import signal  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  script = tmp_path / "parent.py"
  script.write_text(_ORPHAN_PROGRAM)
  pid_file = tmp_path / "worker.pid"
  parent = subprocess.Popen([sys.executable, str(script), str(pid_file)],
                            cwd=conftest.PROJECT_ROOT,
                            env=dict(os.environ, PYTHONPATH=conftest.PROJECT_ROOT))
  try:
    deadline = time.time() + 120
    while not (pid_file.exists() and pid_file.read_text()):
      assert time.time() < deadline and parent.poll() is None
      time.sleep(0.2)
    worker = int(pid_file.read_text())
    assert _alive(worker)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 30
    while time.time() < deadline:
      if not _alive(worker):
        return
      time.sleep(0.2)
    raise AssertionError("worker %d outlived the table process" % worker)
  finally:
    if parent.poll() is None:
      parent.kill()
