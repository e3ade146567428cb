r"""The paper's result tables: pretrain once, fine-tune every method on every task.

For one dataset this script converts the data (CSV -> TFRecord with the
project's converters), pretrains a NextItNet backbone once
(`nextitnet_pretrain.run`), fine-tunes each method of the paper's tables on
each task (`peterrec_finetune.run`) and prints one markdown table in the
paper's layout: rows = methods, columns = tasks (MRR@5 and HR@5 for
cold-start recommendation on the whole test split with 99 sampled
negatives, accuracy over all classes for user-profile tasks), plus the
percentage of parameters each method trains.

  python reproduce_tables.py --dataset=demo            # built-in, ~1 min
  python reproduce_tables.py --dataset=movielens-1m    # gender, age
  python reproduce_tables.py --dataset=amazon-afk      # cold-start
  python reproduce_tables.py --dataset=custom \
      --pretrain_csv=pretrain.csv --finetune_csv=coldrec1.csv,gender.csv \
      --classification_tasks=gender                    # the paper's CSVs

Datasets (PAPER.md, "Our analogs"): `demo` is generated
(`tfrecord_tools/synthetic.py`: a planted latent-group world with a
group-classification task and a cold-start task); `movielens-1m` and
`amazon-afk` are read in place from `--data_root` (default
$PETERREC_SHARED_DATA or ../shared/data); `custom` takes CSVs in the
original formats (SPEC section 1), one fine-tuning CSV per task, named by
its file name.

Outputs in `--output_dir` (default output/tables/<dataset>): `data/`
(converted datasets), `pretrain/` (the backbone's model_dir), `cells/<task>/
<method>/` (each fine-tuning run: metrics.json, parameters.json,
cell.json), `table.md`, `results.json` (every figure, the settings and the
timings). Running the same command again skips every cell already done
(its metrics.json exists and its cell.json records the same
configuration), continues an interrupted one from its last checkpoint, and
redoes a cell whose configuration changed.
"""
import collections
import contextlib
import json
import os
import shutil
import sys
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

import data_loader
import nextitnet_pretrain
import peterrec_finetune
import training_utils
from tfrecord_tools import amazon
from tfrecord_tools import common
from tfrecord_tools import convert_csv
from tfrecord_tools import movielens
from tfrecord_tools import synthetic

DATASETS = ("demo", "movielens-1m", "amazon-afk", "custom")
CELL_FILE = "cell.json"
TABLE_FILE = "table.md"
RESULTS_FILE = "results.json"

# Rows of the table: (label, peterrec_finetune method, insertion).
METHOD_ROWS = collections.OrderedDict([
    ("peterrec_serial", ("PeterRec (serial)", "peterrec", "serial")),
    ("peterrec_parallel", ("PeterRec (parallel)", "peterrec", "parallel")),
    ("peterzero", ("PeterZero", "peterzero", "serial")),
    ("fineall", ("FineAll", "fineall", None)),
    ("finecls", ("FineCLS", "finecls", None)),
    ("finelast1", ("FineLast1", "finelast1", None)),
    ("finelast2", ("FineLast2", "finelast2", None)),
])

# Per dataset: the pretraining run and the fine-tuning budget. Everything
# here can be overridden by flags. Budgets were chosen to finish each real
# dataset in about 20-30 minutes on a shared 2-core CPU (README).
PROFILES = {
    "demo": {
        "pretrain": {"channels": 32, "dilations": [1, 2], "softmax": "full",
                     "batch_size": 64, "learning_rate": 0.005,
                     "train_steps": 400},
        "finetune": {"train_batch_size": 32, "num_train_steps": 600,
                     "learning_rate": 0.005, "eval_batch_size": 256},
        "pretrain_test_fraction": 0.1,
        "finetune_test_fraction": 0.5,
    },
    "movielens-1m": {
        "pretrain": {"channels": 64, "dilations": [1, 4, 1, 4, 1, 4, 1, 4],
                     "softmax": "sampled", "batch_size": 32,
                     "learning_rate": 0.001, "train_steps": 3000},
        "finetune": {"train_batch_size": 128, "num_train_steps": 600,
                     "learning_rate": 0.001, "eval_batch_size": 512},
        "pretrain_test_fraction": 0.1,
        "finetune_test_fraction": 0.2,
    },
    "amazon-afk": {
        "pretrain": {"channels": 64, "dilations": [1, 4, 1, 4, 1, 4, 1, 4],
                     "softmax": "sampled", "batch_size": 32,
                     "learning_rate": 0.001, "train_steps": 3000},
        "finetune": {"train_batch_size": 512, "num_train_steps": 140,
                     "learning_rate": 0.001, "eval_batch_size": 512},
        "pretrain_test_fraction": 0.1,
        "finetune_test_fraction": 0.2,
    },
    "custom": {
        "pretrain": {"channels": 64, "dilations": [1, 4, 1, 4, 1, 4, 1, 4],
                     "softmax": "sampled", "batch_size": 32,
                     "learning_rate": 0.001, "train_steps": 3000},
        "finetune": {"train_batch_size": 512, "num_train_steps": 1000,
                     "learning_rate": 0.001, "eval_batch_size": 512},
        "pretrain_test_fraction": 0.1,
        "finetune_test_fraction": 0.2,
    },
}

Task = collections.namedtuple("Task", ["name", "kind", "csv"])


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def _csv_step_done(csv_dir, names):
  return all(os.path.exists(os.path.join(csv_dir, n)) for n in names)


def prepare_csvs(dataset, output_dir, data_root=None, pretrain_csv=None,
                 finetune_csvs=(), classification_tasks=(), demo_seed=0,
                 demo_options=None):
  """Writes (or finds) the dataset's CSVs in the original formats.

  Returns:
    (pretrain csv path, [Task]) in table column order.
  """
  csv_dir = os.path.join(output_dir, "csv")
  if dataset == "demo":
    if not _csv_step_done(csv_dir, synthetic.OUTPUTS):
      synthetic.write_world_csvs(csv_dir, seed=demo_seed, overwrite=True,
                                 **(demo_options or {}))
    return (os.path.join(csv_dir, synthetic.PRETRAIN_CSV), [
        Task("group", "classification",
             os.path.join(csv_dir, synthetic.GROUP_CSV)),
        Task("coldstart", "recommendation",
             os.path.join(csv_dir, synthetic.COLDSTART_CSV)),
    ])
  if dataset == "movielens-1m":
    root = os.path.join(data_root, "movielens-1m")
    if not _csv_step_done(csv_dir, movielens.OUTPUTS):
      movielens.convert_movielens(
          os.path.join(root, "ratings.dat.gz"),
          os.path.join(root, "users.dat"), csv_dir, max_seq_length=50,
          min_history=5, overwrite=True)
    return (os.path.join(csv_dir, "pretrain.csv"), [
        Task("gender", "classification",
             os.path.join(csv_dir, "finetune_gender.csv")),
        Task("age", "classification",
             os.path.join(csv_dir, "finetune_age.csv")),
    ])
  if dataset == "amazon-afk":
    root = os.path.join(data_root, "amazon-cdsr-abxi", "afk")
    if not _csv_step_done(csv_dir, amazon.OUTPUTS):
      amazon.convert_amazon(
          os.path.join(root, "afk_50_preprocessed.txt.gz"),
          os.path.join(root, "map_item_50.txt.gz"), csv_dir,
          max_seq_length=50, min_history=5, overwrite=True)
    return (os.path.join(csv_dir, "pretrain.csv"), [
        Task("coldstart", "recommendation",
             os.path.join(csv_dir, "finetune_coldstart.csv")),
    ])
  if dataset == "custom":
    if not pretrain_csv or not finetune_csvs:
      raise ValueError("--dataset=custom needs --pretrain_csv and "
                       "--finetune_csv")
    tasks = []
    for path in finetune_csvs:
      name = os.path.basename(path).split(".")[0]
      kind = ("classification" if name in classification_tasks
              else "recommendation")
      tasks.append(Task(name, kind, path))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
      raise ValueError("two fine-tuning CSVs have the same name: %s" % names)
    unknown = sorted(set(classification_tasks) - set(names))
    if unknown:
      raise ValueError("--classification_tasks %s are not among the tasks %s"
                       % (unknown, names))
    return pretrain_csv, tasks
  raise ValueError("dataset must be one of %s, got %r" % (DATASETS, dataset))


def convert_datasets(output_dir, pretrain_csv, tasks, pretrain_test_fraction,
                     finetune_test_fraction):
  """CSV -> TFRecord datasets (the converter skips nothing; it is cheap).

  Returns:
    (pretraining data dir, {task name: fine-tuning data dir}).
  """
  data_dir = os.path.join(output_dir, "data")
  pretrain_dir = os.path.join(data_dir, "pretrain")
  convert_csv.convert("pretrain", pretrain_csv, pretrain_dir,
                      test_fraction=pretrain_test_fraction,
                      print_summary=False)
  vocab = os.path.join(pretrain_dir, data_loader.ITEM_VOCAB_FILE)
  finetune_dirs = collections.OrderedDict()
  for task in tasks:
    directory = os.path.join(data_dir, task.name)
    convert_csv.convert("finetune", task.csv, directory, item_vocab=vocab,
                        test_fraction=finetune_test_fraction,
                        print_summary=False)
    finetune_dirs[task.name] = directory
  return pretrain_dir, finetune_dirs


# ---------------------------------------------------------------------------
# Pretraining and cells
# ---------------------------------------------------------------------------


def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _canonical(values):
  return json.loads(json.dumps(training_utils._to_builtin(values),  # pylint: disable=protected-access
                               sort_keys=True))


def pretrain(output_dir, pretrain_data, settings, seed, log, command=None):
  """Pretrains the backbone once; reuses a finished run with the same request.

  Returns:
    (model_dir, metrics dict, seconds spent now, skipped bool).
  """
  model_dir = os.path.join(output_dir, "pretrain")
  request = _canonical(dict(settings, seed=seed,
                            data=data_loader.load_metadata(pretrain_data)
                            ["fingerprint"]))
  request_path = os.path.join(model_dir, CELL_FILE)
  done = _read_json(os.path.join(model_dir,
                                 nextitnet_pretrain.METRICS_FILENAME))
  if os.path.isdir(model_dir):
    if _read_json(request_path) != request:
      log("pretraining: configuration changed, starting again in %s" %
          model_dir)
      shutil.rmtree(model_dir)
      done = None
    elif done is not None and done.get("global_step") == settings[
        "train_steps"]:
      log("pretraining: done already (%s)" % model_dir)
      return model_dir, done, 0.0, True
  os.makedirs(model_dir, exist_ok=True)
  training_utils.write_json_atomic(request_path, request)
  log("pretraining NextItNet: %d steps of batch %d, %d channels, "
      "dilations %s, %s softmax" % (settings["train_steps"],
                                    settings["batch_size"],
                                    settings["channels"],
                                    settings["dilations"],
                                    settings["softmax"]))
  start = time.time()
  values = nextitnet_pretrain.default_settings(
      data_dir=pretrain_data, model_dir=model_dir, encoder="nextitnet",
      seed=seed, save_checkpoints_steps=max(settings["train_steps"], 1),
      keep_checkpoint_max=1, eval_throttle_secs=100000,
      log_step_count_steps=max(100, settings["train_steps"] // 10),
      save_summary_steps=max(100, settings["train_steps"] // 10),
      argv=[command or "reproduce_tables.reproduce"], **settings)
  with open(os.path.join(model_dir, "stdout.txt"), "w") as out:
    with contextlib.redirect_stdout(out):
      metrics = nextitnet_pretrain.run(values)
  seconds = time.time() - start
  log("pretraining: done in %.0f s: full-ranking MRR@5 %.4f, HR@5 %.4f on "
      "%d held-out sequences" % (seconds, metrics.get("mrr@5", float("nan")),
                                 metrics.get("hr@5", float("nan")),
                                 metrics.get("num_examples", 0)))
  return model_dir, metrics, seconds, False


def cell_options(task, method, insertion, data_dir, cell_dir, checkpoint,
                 finetune_settings, seed):
  """peterrec_finetune options of one table cell."""
  options = peterrec_finetune.default_options()
  options.update(finetune_settings)
  options.update(
      data_dir=data_dir, output_dir=cell_dir, init_checkpoint=checkpoint,
      method=method, insertion=insertion, task=task.kind, seed=seed,
      tf_random_seed=seed, export_task_patch=False,
      save_checkpoints_steps=max(finetune_settings["num_train_steps"], 1),
      keep_checkpoint_max=1,
      log_step_count_steps=max(100, finetune_settings["num_train_steps"]),
      save_summary_steps=max(100, finetune_settings["num_train_steps"]))
  return options


def same_configuration(recorded, current, defaults):
  """Whether a cell's recorded configuration is the current one.

  A key missing on one side counts as its default (`defaults`), so that a
  fine-tuning option added to peterrec_finetune later (with a default that
  keeps the old behaviour) does not invalidate finished cells.
  """
  if recorded is None:
    return False
  missing = object()
  for key in set(recorded) | set(current):
    default = defaults.get(key, missing)
    if recorded.get(key, default) != current.get(key, default):
      return False
  return True


def run_cell(options, fingerprint):
  """Runs one cell unless done; returns (metrics.json dict, seconds, skipped).

  `fingerprint` (JSON-able) identifies the configuration: the options minus
  output_dir plus the data and backbone they stand for.
  """
  cell_dir = options["output_dir"]
  request = _canonical(fingerprint)
  request_path = os.path.join(cell_dir, CELL_FILE)
  metrics_path = os.path.join(cell_dir, peterrec_finetune.METRICS_FILE)
  if os.path.isdir(cell_dir):
    recorded = _read_json(request_path)
    if not same_configuration(recorded, request,
                              _canonical(peterrec_finetune.default_options())):
      shutil.rmtree(cell_dir)  # another configuration: start again
    elif os.path.exists(metrics_path):
      metrics = _read_json(metrics_path)
      if metrics is not None:
        return metrics, 0.0, True
  os.makedirs(cell_dir, exist_ok=True)
  training_utils.write_json_atomic(request_path, request)
  start = time.time()
  # The fine-tuning script's own printout (parameter report, metrics
  # table) goes to the cell's log; the table collects the figures.
  with open(os.path.join(cell_dir, "stdout.txt"), "w") as out:
    with contextlib.redirect_stdout(out):
      outputs = peterrec_finetune.run(options)
  return outputs["metrics"], time.time() - start, False


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------


def task_columns(task, top_k=5):
  """[(column header, metric key)] of a task."""
  if task.kind == "classification":
    return [("%s Acc" % task.name, "accuracy")]
  return [("%s MRR@%d" % (task.name, top_k), "mrr@%d" % top_k),
          ("%s HR@%d" % (task.name, top_k), "hr@%d" % top_k)]


def format_table(tasks, rows, cells, parameters, digits=4, top_k=5):
  """The markdown table: rows = methods, columns = task metrics + trainable %.

  Args:
    tasks: [Task].
    rows: [row key of METHOD_ROWS].
    cells: {task name: {row key: metrics dict}}.
    parameters: {task name: {row key: trainable percent}}.

  Returns:
    str (a missing cell shows "-").
  """
  header = ["method"]
  for task in tasks:
    header += [name for name, _ in task_columns(task, top_k)]
  header.append("trainable %")
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
  for row in rows:
    values = [METHOD_ROWS[row][0]]
    for task in tasks:
      metrics = cells.get(task.name, {}).get(row)
      for _, key in task_columns(task, top_k):
        values.append("-" if metrics is None or key not in metrics
                      else "%.*f" % (digits, metrics[key]))
    percents = [parameters.get(t.name, {}).get(row) for t in tasks]
    percents = [p for p in percents if p is not None]
    if not percents:
      values.append("-")
    elif max(percents) - min(percents) < 0.05:
      values.append("%.2f" % percents[0])
    else:
      values.append(" / ".join("%.2f" % p for p in percents))
    lines.append("| " + " | ".join(values) + " |")
  return "\n".join(lines)


def constant_baseline(data_dir, task, num_negatives=99, seed=0, top_k=5):
  """What a user-independent score reaches (the best constant ranking).

  A causal network with `[CLS]` at the start sees no item of the user, so
  its scores are the same for every user: at best the training split's
  class/target frequencies. Classification: accuracy of the majority
  training class. Recommendation: MRR/HR@k of ranking by training
  frequency against `num_negatives` uniform negatives (our own draw, the
  same protocol as peterrec_finetune's sampled evaluation; ties counted
  against the positive).
  """
  metadata = data_loader.load_metadata(data_dir)
  frequencies = np.zeros(metadata["target_vocab_size"])
  counts = metadata.get("train_target_frequencies",
                        metadata["target_frequencies"])
  for key, value in (counts.items() if isinstance(counts, dict)
                     else enumerate(counts)):
    frequencies[int(key)] = value
  test_targets = _test_targets(metadata)
  if task.kind == "classification":
    best = int(np.argmax(frequencies[1:]) + 1)
    return {"accuracy": float(np.mean(test_targets == best))}
  rng = np.random.RandomState(seed)
  size = metadata["target_vocab_size"]
  mrr, hits = [], []
  for target in test_targets:
    negatives = rng.randint(1, size - 1, size=num_negatives)
    negatives = negatives + (negatives >= target)  # never the positive
    better = np.sum(frequencies[negatives] >= frequencies[target])
    hits.append(float(better < top_k))
    mrr.append(1.0 / (better + 1) if better < top_k else 0.0)
  return {"mrr@%d" % top_k: float(np.mean(mrr)),
          "hr@%d" % top_k: float(np.mean(hits))}


def _test_targets(metadata):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  targets = []
  for record in tf.compat.v1.io.tf_record_iterator(
      metadata["paths"]["test"]):
    example = tf.train.Example.FromString(record)
    targets.append(example.features.feature["target"].int64_list.value[0])
  return np.asarray(targets)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def reproduce(dataset, output_dir, data_root=None, pretrain_csv=None,
              finetune_csvs=(), classification_tasks=(), methods=None,
              task_names=None, pretrain_overrides=None,
              finetune_overrides=None, seed=1, demo_seed=0,
              demo_options=None, quiet_tf=True, log=print, command=None):
  """Everything `main` does; returns the results dict (also in results.json).

  `command` is recorded in results.json (main passes its command line).
  """
  wall_start = time.time()
  if dataset not in PROFILES:
    raise ValueError("dataset must be one of %s, got %r" % (DATASETS,
                                                             dataset))
  profile = PROFILES[dataset]
  methods = list(methods or METHOD_ROWS)
  unknown = sorted(set(methods) - set(METHOD_ROWS))
  if unknown:
    raise ValueError("unknown methods %s (known: %s)" %
                     (unknown, list(METHOD_ROWS)))
  pretrain_settings = dict(profile["pretrain"])
  pretrain_settings.update({k: v for k, v in (pretrain_overrides or {}).items()
                            if v is not None})
  pretrain_settings["dilations"] = [int(d) for d in
                                    pretrain_settings["dilations"]]
  finetune_settings = dict(profile["finetune"])
  finetune_settings.update({k: v for k, v in
                            (finetune_overrides or {}).items()
                            if v is not None})
  os.makedirs(output_dir, exist_ok=True)
  if quiet_tf:
    logging.set_verbosity(logging.WARNING)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)

  log("[%s] preparing data in %s" % (dataset, output_dir))
  csv_path, tasks = prepare_csvs(dataset, output_dir, data_root, pretrain_csv,
                                 finetune_csvs, classification_tasks,
                                 demo_seed, demo_options)
  if task_names:
    missing = sorted(set(task_names) - {t.name for t in tasks})
    if missing:
      raise ValueError("unknown tasks %s (this dataset has %s)" %
                       (missing, [t.name for t in tasks]))
    tasks = [t for t in tasks if t.name in task_names]
  pretrain_data, finetune_dirs = convert_datasets(
      output_dir, csv_path, tasks, profile["pretrain_test_fraction"],
      profile["finetune_test_fraction"])
  data = {"pretrain": _data_summary(pretrain_data)}
  for task in tasks:
    data[task.name] = _data_summary(finetune_dirs[task.name])
    log("[%s] task %s (%s): %d training / %d test examples, %d targets" %
        (dataset, task.name, task.kind, data[task.name]["num_train"],
         data[task.name]["num_test"], data[task.name]["target_vocab_size"] - 1))

  model_dir, pretrain_metrics, pretrain_seconds, _ = pretrain(
      output_dir, pretrain_data, pretrain_settings, seed, log, command)
  checkpoint = peterrec_finetune.checkpoint_lib.resolve_checkpoint(model_dir)
  backbone_id = _read_json(os.path.join(model_dir, CELL_FILE))

  cells = collections.OrderedDict((t.name, collections.OrderedDict())
                                  for t in tasks)
  parameters = collections.OrderedDict((t.name, collections.OrderedDict())
                                       for t in tasks)
  figures = collections.OrderedDict((t.name, collections.OrderedDict())
                                    for t in tasks)
  total = len(tasks) * len(methods)
  index = 0
  for task in tasks:
    for row in methods:
      index += 1
      label, method, insertion = METHOD_ROWS[row]
      cell_dir = os.path.join(output_dir, "cells", task.name, row)
      options = cell_options(task, method, insertion, finetune_dirs[task.name],
                             cell_dir, checkpoint, finetune_settings, seed)
      fingerprint = dict(
          {k: v for k, v in options.items()
           if k not in ("output_dir", "data_dir", "init_checkpoint")},
          data=data[task.name]["fingerprint"], backbone=backbone_id,
          checkpoint=os.path.basename(checkpoint))
      log("[%d/%d] %s / %s: %d steps of batch %d ..." %
          (index, total, task.name, label, options["num_train_steps"],
           options["train_batch_size"]))
      metrics, seconds, skipped = run_cell(options, fingerprint)
      report = _read_json(os.path.join(cell_dir,
                                       peterrec_finetune.PARAMETERS_FILE))
      cells[task.name][row] = metrics["metrics"]
      parameters[task.name][row] = report["trainable_percent"]
      figures[task.name][row] = {
          "label": label, "method": method, "insertion": metrics["insertion"],
          "metrics": metrics["metrics"], "num_test": metrics["num_test"],
          "global_step": metrics["global_step"],
          "trainable_parameters": report["trainable_parameters"],
          "total_parameters": report["total_parameters"],
          "trainable_percent": report["trainable_percent"],
          "parameters_by_group": report["parameters_by_group"],
      }
      timing_path = os.path.join(cell_dir, "timing.json")
      if not skipped:
        training_utils.write_json_atomic(timing_path, {"seconds": seconds})
      figures[task.name][row]["seconds"] = round(
          (_read_json(timing_path) or {}).get("seconds", float("nan")), 1)
      shown = ", ".join("%s %.4f" % (k, metrics["metrics"][k])
                        for _, k in task_columns(task))
      log("[%d/%d] %s / %s: %s%s" % (
          index, total, task.name, label, shown,
          " (done already, skipped)" if skipped else
          " (%.0f s)" % seconds))

  reference = collections.OrderedDict(
      (t.name, constant_baseline(finetune_dirs[t.name], t)) for t in tasks)
  table = format_table(tasks, methods, cells, parameters)
  wall = time.time() - wall_start
  title = ("%s: %s; full test splits (%s); backbone NextItNet, %d channels, "
           "pretrained %d steps" % (
               dataset, ", ".join("%s = %s" % (t.name, t.kind)
                                  for t in tasks),
               ", ".join("%s %d" % (t.name, data[t.name]["num_test"])
                         for t in tasks),
               pretrain_settings["channels"],
               pretrain_settings["train_steps"]))
  notes = ["Recommendation: MRR@5/HR@5 of the positive among it and 99 "
           "uniformly sampled negative targets; classification: accuracy "
           "over all classes. Trainable % counts the head.",
           "User-independent reference (majority class / training "
           "popularity; the best a causal [CLS]-at-start model can do): " +
           "; ".join("%s %s" % (name, ", ".join(
               "%s %.4f" % (k, v) for k, v in values.items()))
                     for name, values in reference.items())]
  text = "\n".join([title, "", table, ""] + notes) + "\n"
  training_utils.write_text_atomic(os.path.join(output_dir, TABLE_FILE), text)
  results = {
      "dataset": dataset,
      "command": command or common.python_call(
          "reproduce_tables.reproduce", dataset=dataset,
          output_dir=output_dir, methods=methods, task_names=task_names,
          pretrain_overrides=pretrain_overrides,
          finetune_overrides=finetune_overrides, seed=seed,
          demo_seed=demo_seed, demo_options=demo_options),
      "tasks": [t._asdict() for t in tasks],
      "methods": methods,
      "pretrain": {"settings": pretrain_settings, "metrics": pretrain_metrics,
                   "seconds_this_run": round(pretrain_seconds, 1),
                   "model_dir": model_dir},
      "finetune_settings": finetune_settings,
      "seed": seed,
      "data": data,
      "cells": figures,
      "user_independent_reference": reference,
      "table_markdown": table,
      "wall_seconds_this_run": round(wall, 1),
  }
  training_utils.write_json_atomic(os.path.join(output_dir, RESULTS_FILE),
                                   results)
  log("")
  log(text)
  log("Table: %s; all figures: %s; wall time of this run %.0f s" % (
      os.path.join(output_dir, TABLE_FILE),
      os.path.join(output_dir, RESULTS_FILE), wall))
  return results


def _data_summary(directory):
  metadata = data_loader.load_metadata(directory)
  keys = ("num_train", "num_test", "item_vocab_size", "target_vocab_size",
          "seq_length", "source_length", "fingerprint", "num_unknown_items")
  return dict({k: metadata[k] for k in keys if k in metadata},
              data_dir=directory)


def define_flags(flag_values=flags.FLAGS):
  """Declares the flags (idempotent)."""
  if "dataset" in flag_values:
    return
  fv = {"flag_values": flag_values}
  flags.DEFINE_enum("dataset", "demo", list(DATASETS),
                    "demo (generated), movielens-1m (gender, age), "
                    "amazon-afk (cold-start), custom (--pretrain_csv and "
                    "--finetune_csv).", **fv)
  flags.DEFINE_string("output_dir", None,
                      "Default output/tables/<dataset>.", **fv)
  flags.DEFINE_string("data_root",
                      os.environ.get("PETERREC_SHARED_DATA",
                                     os.path.join("..", "shared", "data")),
                      "Where movielens-1m/ and amazon-cdsr-abxi/ are.", **fv)
  flags.DEFINE_string("pretrain_csv", None, "custom: pretraining CSV.", **fv)
  flags.DEFINE_list("finetune_csv", [], "custom: fine-tuning CSVs, one per "
                    "task (task name = file name without extension).", **fv)
  flags.DEFINE_list("classification_tasks", [], "custom: the tasks whose "
                    "targets are class labels (others: recommendation).",
                    **fv)
  flags.DEFINE_list("methods", list(METHOD_ROWS), "Table rows.", **fv)
  flags.DEFINE_list("tasks", [], "Only these tasks (default: all).", **fv)
  flags.DEFINE_integer("pretrain_steps", None, "Pretraining steps "
                       "(default: the dataset's profile).", **fv)
  flags.DEFINE_integer("channels", None, "Backbone channels.", **fv)
  flags.DEFINE_list("dilations", None, "Backbone dilations.", **fv)
  flags.DEFINE_integer("pretrain_batch_size", None, "Pretraining batch.",
                       **fv)
  flags.DEFINE_integer("finetune_steps", None, "Fine-tuning steps per cell.",
                       **fv)
  flags.DEFINE_integer("finetune_batch_size", None, "Fine-tuning batch.",
                       **fv)
  flags.DEFINE_float("finetune_learning_rate", None, "Fine-tuning Adam "
                     "learning rate.", **fv)
  flags.DEFINE_integer("seed", 1, "Seed of pretraining and fine-tuning "
                       "(initializers, shuffles, negatives).", **fv)
  flags.DEFINE_integer("demo_seed", 0, "demo: the generated world's seed.",
                       **fv)


def main(argv):
  del argv
  f = flags.FLAGS
  output_dir = f.output_dir or os.path.join("output", "tables", f.dataset)
  reproduce(
      f.dataset, output_dir, data_root=f.data_root,
      pretrain_csv=f.pretrain_csv, finetune_csvs=f.finetune_csv,
      classification_tasks=f.classification_tasks, methods=f.methods,
      task_names=f.tasks or None,
      pretrain_overrides={"train_steps": f.pretrain_steps,
                          "channels": f.channels, "dilations": f.dilations,
                          "batch_size": f.pretrain_batch_size},
      finetune_overrides={"num_train_steps": f.finetune_steps,
                          "train_batch_size": f.finetune_batch_size,
                          "learning_rate": f.finetune_learning_rate},
      seed=f.seed, demo_seed=f.demo_seed,
      command=" ".join(["python"] + sys.argv))


if __name__ == "__main__":
  define_flags()
  app.run(main)
