"""reproduce_tables end to end on a tiny demo world: the table's shape, a
number in every cell, and a rerun that skips the cells already done."""
import json
import os
import re

from absl import flags
import pytest

import reproduce_tables as rt

TINY_WORLD = {"num_groups": 2, "items_per_group": 12, "source_length": 6,
              "num_pretrain_users": 120, "num_finetune_users": 40,
              "targets_per_group": 5, "max_targets": 2}
TINY_PRETRAIN = {"channels": 8, "dilations": [1, 2], "batch_size": 8,
                 "train_steps": 3}
TINY_FINETUNE = {"num_train_steps": 2, "train_batch_size": 8,
                 "eval_batch_size": 64}


def reproduce(output_dir, log):
  return rt.reproduce("demo", output_dir, demo_options=TINY_WORLD,
                      pretrain_overrides=TINY_PRETRAIN,
                      finetune_overrides=TINY_FINETUNE, log=log.append)


def parse_table(text):
  """The markdown table's rows as lists of cells (header first)."""
  lines = [l for l in text.splitlines() if l.startswith("|")]
  rows = [[c.strip() for c in l.strip("|").split("|")] for l in lines]
  return rows[0], rows[2:]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
  output_dir = str(tmp_path_factory.mktemp("tables"))
  log = []
  results = reproduce(output_dir, log)
  return output_dir, results, log


def test_table_shape_and_numbers(first_run):
  output_dir, results, log = first_run
  with open(os.path.join(output_dir, rt.TABLE_FILE)) as f:
    header, rows = parse_table(f.read())
  # Demo tasks: group (accuracy), coldstart (MRR@5, HR@5); + trainable %.
  assert header == ["method", "group Acc", "coldstart MRR@5",
                    "coldstart HR@5", "trainable %"]
  assert [r[0] for r in rows] == [label for label, _, _ in
                                  rt.METHOD_ROWS.values()]
  for row in rows:
    assert len(row) == len(header)
    for cell in row[1:-1]:
      value = float(cell)
      assert 0.0 <= value <= 1.0, row
    for percent in row[-1].split(" / "):
      assert 0.0 < float(percent) <= 100.0, row
  fineall = rows[[r[0] for r in rows].index("FineAll")]
  assert fineall[-1] == "100.00"
  # results.json holds every figure.
  with open(os.path.join(output_dir, rt.RESULTS_FILE)) as f:
    stored = json.load(f)
  assert stored["table_markdown"] == results["table_markdown"]
  for task in ("group", "coldstart"):
    assert sorted(stored["cells"][task]) == sorted(rt.METHOD_ROWS)
    for cell in stored["cells"][task].values():
      assert cell["num_test"] == stored["data"][task]["num_test"] > 0
      assert cell["global_step"] == TINY_FINETUNE["num_train_steps"]
  # Progress across cells: [k/14] for every cell.
  done = [l for l in log if re.match(r"\[\d+/14\] .*: (accuracy|mrr)", l)]
  assert len(done) == 14


def test_rerun_skips_done_cells_and_redoes_changed_ones(first_run):
  output_dir, results, _ = first_run
  metrics_file = os.path.join(output_dir, "cells", "group", "finecls",
                              "metrics.json")
  before = os.path.getmtime(metrics_file)
  log = []
  again = reproduce(output_dir, log)
  assert "pretraining: done already" in " ".join(log)
  assert sum("done already, skipped" in l for l in log) == 14
  assert again["table_markdown"] == results["table_markdown"]
  assert os.path.getmtime(metrics_file) == before

  # Another fine-tuning budget for one method: only those cells run again.
  log = []
  rt.reproduce("demo", output_dir, demo_options=TINY_WORLD,
               pretrain_overrides=TINY_PRETRAIN,
               finetune_overrides=dict(TINY_FINETUNE, num_train_steps=3),
               methods=["finecls"], log=log.append)
  assert sum("done already, skipped" in l for l in log) == 0
  with open(metrics_file) as f:
    assert json.load(f)["global_step"] == 3


def test_command_line_flags_parse():
  flag_values = flags.FlagValues()
  rt.define_flags(flag_values)
  flag_values(["reproduce_tables.py", "--dataset=custom",
               "--pretrain_csv=p.csv", "--finetune_csv=a.csv,g.csv",
               "--classification_tasks=g", "--finetune_steps=7"])
  assert flag_values.finetune_csv == ["a.csv", "g.csv"]
  assert flag_values.finetune_steps == 7
  assert flag_values.methods == list(rt.METHOD_ROWS)
  with pytest.raises(ValueError, match="are not among the tasks"):
    rt.prepare_csvs("custom", "/nonexistent", pretrain_csv="p.csv",
                    finetune_csvs=["a.csv"], classification_tasks=["g"])


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
