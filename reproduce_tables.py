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
original formats (docs/MODEL.md §1), one fine-tuning CSV per task, named by
its file name.

Outputs in `--output_dir` (default output/tables/<dataset>): `data/`
(converted datasets), `pretrain/` (the backbone's output_dir), `cells/<task>/
<method>/` (each fine-tuning run: metrics.json, parameters.json,
cell.json), `table.md`, `results.json` (every figure, the settings and the
timings). Running the same command again skips every cell already done
(its metrics.json exists and its cell.json records the same
configuration), continues an interrupted one from its last checkpoint, and
redoes a cell whose configuration changed.
"""
import collections
import concurrent.futures
import contextlib
import ctypes
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

import baselines
import data_loader
import finetuning
import nextitnet_pretrain
import peterrec_finetune
import training_utils
from ops import checkpoint as checkpoint_lib
from tfrecord_tools import amazon
from tfrecord_tools import common
from tfrecord_tools import convert_csv
from tfrecord_tools import movielens
from tfrecord_tools import synthetic

DATASETS = ("demo", "movielens-1m", "amazon-afk", "custom")
CELL_FILE = "cell.json"
TABLE_FILE = "table.md"
RESULTS_FILE = "results.json"

# Rows of the table. backbone: which pretrained network (nextitnet is causal,
# grec the non-causal encoder); cls_position "start" is the paper's ablation
# of the causal network (its [CLS] state sees no item of the user);
# user_vector "mean" is our variant: the mean of every position's state
# instead of the [CLS] state (docs/DEVIATIONS.md F13).
Row = collections.namedtuple("Row", ["label", "method", "insertion",
                                     "backbone", "cls_position",
                                     "user_vector"], defaults=("cls",))
METHOD_ROWS = collections.OrderedDict([
    ("peterrec_serial", Row("PeterRec (serial)", "peterrec", "serial",
                            "nextitnet", "end")),
    ("peterrec_parallel", Row("PeterRec (parallel)", "peterrec", "parallel",
                              "nextitnet", "end")),
    ("grec_peterrec_serial", Row("PeterRec GRec (serial)", "peterrec",
                                 "serial", "grec", "end")),
    ("grec_peterrec_parallel", Row("PeterRec GRec (parallel)", "peterrec",
                                   "parallel", "grec", "end")),
    ("peterrec_cls_start", Row("PeterRec, [CLS] at start (ablation)",
                               "peterrec", "serial", "nextitnet", "start")),
    ("peterrec_serial_mean", Row("PeterRec (serial), mean user vector",
                                 "peterrec", "serial", "nextitnet", "end",
                                 "mean")),
    ("fineall_mean", Row("FineAll, mean user vector", "fineall", None,
                         "nextitnet", "end", "mean")),
    ("peterzero", Row("PeterZero", "peterzero", "serial", "nextitnet", "end")),
    ("fineall", Row("FineAll", "fineall", None, "nextitnet", "end")),
    ("finecls", Row("FineCLS", "finecls", None, "nextitnet", "end")),
    ("finelast1", Row("FineLast1", "finelast1", None, "nextitnet", "end")),
    ("finelast2", Row("FineLast2", "finelast2", None, "nextitnet", "end")),
])
# Calibration rows (not methods of the paper; baselines.py), on the same
# splits: the user-independent reference and a linear bag-of-items model.
CALIBRATION_ROWS = collections.OrderedDict([
    ("reference", "calibration: user-independent reference"),
    ("linear", "calibration: linear bag of items"),
])
# The rows of the convergence figure and of the few-label runs.
CURVE_ROWS = ("peterrec_serial", "fineall", "finecls")
FEW_LABEL_ROWS = ("peterrec_serial", "fineall", "peterzero")

_COMMON_FINETUNE = {"validation_fraction": 0.1, "split_seed": 10,
                    "eval_batch_size": 512}
_REAL_PRETRAIN = {"channels": 64, "dilations": [1, 4, 1, 4, 1, 4, 1, 4],
                  "softmax": "sampled", "train_batch_size": 32,
                  "learning_rate": 0.001, "num_train_steps": 3000}

# What the real datasets share: 3 seeds, a 10% few-label run, splits by user.
_REAL_PROFILE = {
    "pretrain": dict(_REAL_PRETRAIN),
    "seeds": [1, 2, 3],
    "few_label_fractions": [0.1],
    "pretrain_test_fraction": 0.1,
    "finetune_test_fraction": 0.2,
    "split_by": "user",
    "parallel_runs": 2,
}

def _real_profile(learning_rates, rows, **finetune):
  """_REAL_PROFILE with these fine-tuning budgets, grid and rows."""
  return dict(_REAL_PROFILE, finetune=dict(_COMMON_FINETUNE, **finetune),
              learning_rates=learning_rates, rows=rows)


# Per dataset: the pretraining runs and the fine-tuning protocol. Everything
# here can be overridden by flags. Learning rates are a grid: each row takes
# the one with the best validation metric on the first seed, then runs the
# other seeds with it; the step is the best validation checkpoint.
PROFILES = {
    "demo": {
        "pretrain": {"channels": 32, "dilations": [1, 2], "softmax": "full",
                     "train_batch_size": 64, "learning_rate": 0.005,
                     "num_train_steps": 400},
        "finetune": dict(_COMMON_FINETUNE, train_batch_size=32,
                         num_train_steps=600, eval_every_steps=100,
                         early_stopping_patience=0,
                         eval_batch_size=256),
        "learning_rates": [0.005],
        "seeds": [1],
        "few_label_fractions": [],
        "rows": ["peterrec_serial", "peterrec_parallel", "peterzero",
                 "fineall", "finecls", "finelast1", "finelast2"],
        "pretrain_test_fraction": 0.1,
        "finetune_test_fraction": 0.5,
        "split_by": "row",
        "parallel_runs": 2,
    },
    # Without FineLast2 (within 0.003 of FineLast1 on both tasks in the
    # first three-seed table), for the hour.
    # Pretraining on every window of each user's whole history (stride 25:
    # 40,000 lines, against 6,040 of the last 50 ratings), and longer: the
    # last 50 alone overfit after 10-20 epochs, and the windows gained
    # 0.010 (gender) and 0.022 (age) for PeterRec on validation-chosen
    # checkpoints (docs/RESULTS.md).
    "movielens-1m": dict(
        _real_profile(
            train_batch_size=128, num_train_steps=240, eval_every_steps=40,
            early_stopping_patience=2, learning_rates=[0.001, 0.0001],
            rows=[r for r in METHOD_ROWS if r != "finelast2"]),
        pretrain=dict(_REAL_PRETRAIN, train_batch_size=64,
                      num_train_steps=8000),
        pretrain_window_stride=25),
    # About one epoch of the 72k training rows: within the hour on two cores
    # (at 0.001, 600 steps of 512 gained 0.0034 validation HR@5 over the
    # best at 240). Without the two rows that were weakest on MovieLens-1M,
    # for time.
    "amazon-afk": _real_profile(
        train_batch_size=256, num_train_steps=300, eval_every_steps=50,
        early_stopping_patience=3, learning_rates=[0.003, 0.001],
        rows=[r for r in METHOD_ROWS
              if r not in ("fineall_mean", "finelast2")]),
    "custom": {
        "pretrain": dict(_REAL_PRETRAIN),
        "finetune": dict(_COMMON_FINETUNE, train_batch_size=512,
                         num_train_steps=1000, early_stopping_patience=4),
        "learning_rates": [0.001, 0.0001],
        "seeds": [1, 2, 3],
        "few_label_fractions": [],
        "rows": list(METHOD_ROWS),
        "pretrain_test_fraction": 0.1,
        "finetune_test_fraction": 0.2,
        "split_by": "row",
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
                 demo_options=None, pretrain_window_stride=0):
  """Writes (or finds) the dataset's CSVs in the original formats.

  Returns:
    (pretrain csv path, [Task] in table column order, the CSV of lines for
    the pretraining's training split only, or None).
  """
  csv_dir = os.path.join(output_dir, "csv")
  if pretrain_window_stride and dataset != "movielens-1m":
    raise ValueError("pretrain_window_stride applies to movielens-1m only")
  if dataset == "demo":
    if not _csv_step_done(csv_dir, synthetic.OUTPUTS):
      synthetic.write_world_csvs(csv_dir, seed=demo_seed, overwrite=True,
                                 **(demo_options or {}))
    return (os.path.join(csv_dir, synthetic.PRETRAIN_CSV), [
        Task("group", "classification",
             os.path.join(csv_dir, synthetic.GROUP_CSV)),
        Task("coldstart", "recommendation",
             os.path.join(csv_dir, synthetic.COLDSTART_CSV)),
    ], None)
  if dataset == "movielens-1m":
    root = os.path.join(data_root, "movielens-1m")
    stats = _read_json(os.path.join(csv_dir, movielens.STATS_JSON)) or {}
    if (not _csv_step_done(csv_dir, movielens.OUTPUTS) or
        stats.get("pretrain_window_stride", 0) != pretrain_window_stride):
      movielens.convert_movielens(
          os.path.join(root, "ratings.dat.gz"),
          os.path.join(root, "users.dat"), csv_dir, max_seq_length=50,
          min_history=5, overwrite=True,
          pretrain_window_stride=pretrain_window_stride)
    return (os.path.join(csv_dir, movielens.PRETRAIN_CSV), [
        Task("gender", "classification",
             os.path.join(csv_dir, movielens.GENDER_CSV)),
        Task("age", "classification",
             os.path.join(csv_dir, movielens.AGE_CSV)),
    ], (os.path.join(csv_dir, movielens.WINDOWS_CSV)
        if pretrain_window_stride else None))
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
    ], None)
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
    return pretrain_csv, tasks, None
  raise ValueError("dataset must be one of %s, got %r" % (DATASETS, dataset))


def convert_datasets(output_dir, pretrain_csv, tasks, pretrain_test_fraction,
                     finetune_test_fraction, split_by="row",
                     pretrain_train_only_csv=None):
  """CSV -> TFRecord datasets (the converter skips nothing; it is cheap).

  `pretrain_train_only_csv`: lines that join the pretraining's training
  split only (the earlier windows of each user's history).

  Returns:
    (pretraining data dir, {task name: fine-tuning data dir}).
  """
  data_dir = os.path.join(output_dir, "data")
  pretrain_dir = os.path.join(data_dir, "pretrain")
  # overwrite: this is the table's own directory, and a changed setting
  # (or converter version) must not stop it.
  convert_csv.convert("pretrain", pretrain_csv, pretrain_dir,
                      test_fraction=pretrain_test_fraction,
                      train_only_csv=pretrain_train_only_csv,
                      overwrite=True, print_summary=False)
  vocab = os.path.join(pretrain_dir, data_loader.ITEM_VOCAB_FILE)
  finetune_dirs = collections.OrderedDict()
  for task in tasks:
    directory = os.path.join(data_dir, task.name)
    convert_csv.convert("finetune", task.csv, directory, item_vocab=vocab,
                        test_fraction=finetune_test_fraction,
                        split_by=split_by, task=task.kind, overwrite=True,
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
  return json.loads(json.dumps(training_utils.to_builtin(values),
                               sort_keys=True))


def pretrain(output_dir, pretrain_data, settings, seed, log, command=None,
             encoder="nextitnet"):
  """Pretrains a backbone once; reuses a finished run with the same request.

  Returns:
    (model_dir, metrics dict, seconds spent now, skipped bool).
  """
  model_dir = os.path.join(output_dir, "pretrain" if encoder == "nextitnet"
                           else "pretrain_" + encoder)
  # How many threads ran it does not change what was trained.
  request = _canonical(dict({k: v for k, v in settings.items()
                             if not k.endswith("_op_threads")},
                            seed=seed, encoder=encoder,
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
        "num_train_steps"]:
      log("pretraining: done already (%s)" % model_dir)
      return model_dir, done, 0.0, True
  os.makedirs(model_dir, exist_ok=True)
  training_utils.write_json_atomic(request_path, request)
  log("pretraining %s: %d steps of batch %d, %d channels, "
      "dilations %s, %s softmax" % (encoder, settings["num_train_steps"],
                                    settings["train_batch_size"],
                                    settings["channels"],
                                    settings["dilations"],
                                    settings["softmax"]))
  start = time.time()
  options = nextitnet_pretrain.default_options(
      data_dir=pretrain_data, output_dir=model_dir, encoder=encoder,
      seed=seed, save_checkpoints_steps=max(settings["num_train_steps"], 1),
      keep_checkpoint_max=1, eval_throttle_secs=100000,
      log_step_count_steps=max(100, settings["num_train_steps"] // 10),
      save_summary_steps=max(100, settings["num_train_steps"] // 10),
      **settings)
  with open(os.path.join(model_dir, "stdout.txt"), "w") as out:
    with contextlib.redirect_stdout(out):
      metrics = nextitnet_pretrain.run(
          options, command=command or "reproduce_tables.reproduce")
  seconds = time.time() - start
  log("pretraining: done in %.0f s: full-ranking MRR@5 %.4f, HR@5 %.4f on "
      "%d held-out sequences" % (seconds, metrics.get("mrr@5", float("nan")),
                                 metrics.get("hr@5", float("nan")),
                                 metrics.get("num_examples", 0)))
  return model_dir, metrics, seconds, False


def cell_options(task, row, data_dir, cell_dir, checkpoint, finetune_settings,
                 seed, learning_rate, labelled_fraction=1.0):
  """peterrec_finetune options of one run of a table row."""
  options = peterrec_finetune.default_options()
  options.update(finetune_settings)
  steps = finetune_settings["num_train_steps"]
  options.update(
      data_dir=data_dir, output_dir=cell_dir, init_checkpoint=checkpoint,
      method=row.method, insertion=row.insertion,
      cls_position=row.cls_position, user_vector=row.user_vector,
      task=task.kind, seed=seed,
      tf_random_seed=seed, learning_rate=learning_rate,
      labelled_fraction=labelled_fraction, export_task_patch=False,
      validate_at_start=True,  # the curves' step-0 point
      save_checkpoints_steps=max(steps, 1), keep_checkpoint_max=1,
      log_step_count_steps=max(100, steps), save_summary_steps=max(100, steps))
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
  metrics_path = os.path.join(cell_dir, finetuning.METRICS_FILE)
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
# The protocol: a learning rate chosen on validation, then several seeds
# ---------------------------------------------------------------------------


def selection_key(task, top_k=5):
  """The validation metric that chooses checkpoints and learning rates."""
  return "accuracy" if task.kind == "classification" else "hr@%d" % top_k


def mean_and_sd(values):
  """(mean, sample standard deviation; 0 for one value) of a list."""
  values = np.asarray(values, dtype=np.float64)
  sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return float(np.mean(values)), sd


def summarize_seeds(per_seed, keys):
  """{key: {"mean", "sd", "se", "values"}} over the seeds' metric dicts."""
  summary = {}
  for key in keys:
    values = [m[key] for m in per_seed]
    mean, sd = mean_and_sd(values)
    summary[key] = {"mean": mean, "sd": sd,
                    "se": sd / np.sqrt(len(values)), "values": values}
  return summary


def _die_with_parent():
  """Linux: this process gets SIGTERM when the table's process dies.

  Otherwise a `kill` of the table leaves its workers running their queued
  runs for an hour, on the cores and in the directories of the next one.
  """
  if not sys.platform.startswith("linux"):
    return
  try:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  except OSError:
    return
  if os.getppid() == 1:  # the parent died before prctl
    os.kill(os.getpid(), signal.SIGTERM)


def _quiet_worker():
  """Initializer of the worker processes: TensorFlow's warnings only."""
  _die_with_parent()
  logging.set_verbosity(logging.WARNING)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)


Request = collections.namedtuple("Request", ["task", "row", "seed",
                                             "learning_rate",
                                             "labelled_fraction"])


class Runner(object):
  """Runs (or finds done) the fine-tuning runs of one table, logging each.

  With `workers` > 1 the runs of a batch go to that many worker processes
  (one thread each); on 2 cores two single-threaded runs finish sooner
  than two runs one after the other with two threads each.
  """

  def __init__(self, output_dir, finetune_dirs, data, checkpoints,
               backbone_ids, finetune_settings, log, workers=1):
    self.output_dir = output_dir
    self.finetune_dirs = finetune_dirs
    self.data = data
    self.checkpoints = checkpoints
    self.backbone_ids = backbone_ids
    self.settings = dict(finetune_settings)
    if workers > 1:
      self.settings.update(intra_op_threads=1, inter_op_threads=1)
    self.log = log
    self.workers = workers
    self.count = 0
    self.seconds = 0.0
    self.started = time.time()
    self.total = None  # runs planned, for the ETA (set by the caller)
    self._skipped = 0

  def _prepare(self, request):
    task, row = request.task, METHOD_ROWS[request.row]
    name = "lr%g-seed%d" % (request.learning_rate, request.seed)
    if request.labelled_fraction < 1.0:
      name = "labels%g-" % request.labelled_fraction + name
    cell_dir = os.path.join(self.output_dir, "cells", task.name, request.row,
                            name)
    checkpoint = self.checkpoints[row.backbone]
    options = cell_options(task, row, self.finetune_dirs[task.name], cell_dir,
                           checkpoint, self.settings, request.seed,
                           request.learning_rate, request.labelled_fraction)
    fingerprint = dict(
        {k: v for k, v in options.items()
         if k not in ("output_dir", "data_dir", "init_checkpoint",
                      "intra_op_threads", "inter_op_threads")},
        data=self.data[task.name]["fingerprint"],
        backbone=self.backbone_ids[row.backbone],
        checkpoint=os.path.basename(checkpoint))
    return options, fingerprint, name

  def _progress(self):
    """"done/total, elapsed, ETA" (the ETA from the runs run, not skipped)."""
    elapsed = time.time() - self.started
    if not self.total:
      return "%d done, %.0f s" % (self.count, elapsed)
    ran = self.count - self._skipped
    left = max(self.total - self.count, 0)
    eta = ("ETA %.0f min" % (elapsed / ran * left / 60.0) if ran else
           "ETA -")
    return "%d/%d, %.1f min, %s" % (self.count, self.total, elapsed / 60.0,
                                    eta)

  def run_many(self, requests):
    """Runs a batch of independent requests; returns their results in order.

    A result is the run's metrics.json dict plus trainable_percent.
    """
    prepared = [self._prepare(r) for r in requests]
    if self.workers > 1 and len(requests) > 1:
      context = multiprocessing.get_context("spawn")
      with concurrent.futures.ProcessPoolExecutor(
          self.workers, mp_context=context,
          initializer=_quiet_worker) as pool:
        futures = [pool.submit(run_cell, options, fingerprint)
                   for options, fingerprint, _ in prepared]
        outcomes = []
        for request, (options, _, name), future in zip(requests, prepared,
                                                      futures):
          outcomes.append(self._finish(request, options, name,
                                       future.result(), len(requests)))
        return outcomes
    return [self._finish(request, options, name,
                         run_cell(options, fingerprint), len(requests))
            for request, (options, fingerprint, name) in zip(requests,
                                                             prepared)]

  def _finish(self, request, options, name, outcome, batch_size):
    metrics, seconds, skipped = outcome
    self.count += 1
    self.seconds += seconds
    self._skipped += int(skipped)
    key = selection_key(request.task)
    best = metrics["validation"]["best"]
    self.log("  [%s] %s / %s / %s: validation %s %.4f "
             "at step %d, test %s %.4f%s" % (
                 self._progress(), request.task.name,
                 METHOD_ROWS[request.row].label, name, key,
                 best["metrics"][key], best["step"], key,
                 metrics["metrics"][key],
                 " (done already)" if skipped else " (%.0f s)" % seconds))
    report = _read_json(os.path.join(options["output_dir"],
                                     finetuning.PARAMETERS_FILE))
    return dict(metrics, trainable_percent=report["trainable_percent"])

  def select_and_repeat(self, tasks, rows, learning_rates, seeds,
                        few_rows=(), fractions=()):
    """For every task and row: the learning rate with the best validation
    metric on the first seed, then every seed with it; and the few-label
    runs of `few_rows` at each of `fractions` with that rate, in the same
    batch as the seeds (no worker waits between the two).

    Returns:
      ({task name: {row key: record for results.json}},
       {(task name, row, fraction): [metrics.json dict per seed]}).
    """
    pairs = [(task, row) for task in tasks for row in rows]
    self.log("grid: %d runs (%d rows x %d learning rates, seed %d)" % (
        len(pairs) * len(learning_rates), len(pairs), len(learning_rates),
        seeds[0]))
    grid_runs = self.run_many([Request(task, row, seeds[0], lr, 1.0)
                               for task, row in pairs
                               for lr in learning_rates])
    chosen = {}
    grids = {}
    for index, (task, row) in enumerate(pairs):
      runs = grid_runs[index * len(learning_rates):
                       (index + 1) * len(learning_rates)]
      key = selection_key(task)
      grid = collections.OrderedDict(
          (lr, run["validation"]["best"]["metrics"][key])
          for lr, run in zip(learning_rates, runs))
      best_lr = max(grid, key=lambda lr: (grid[lr],
                                          -learning_rates.index(lr)))
      chosen[task.name, row] = (best_lr, runs[learning_rates.index(best_lr)])
      grids[task.name, row] = grid
    few = [(task, row, fraction) for task in tasks for row in few_rows
           for fraction in fractions]
    self.log("seeds: %d runs (%d rows x seeds %s at the chosen rates); few "
             "labels: %d runs (%d rows x fractions %s x %d seeds)" % (
                 len(pairs) * (len(seeds) - 1), len(pairs), seeds[1:],
                 len(few) * len(seeds), len(few_rows), fractions,
                 len(seeds)))
    runs = self.run_many(
        [Request(task, row, seed, chosen[task.name, row][0], 1.0)
         for task, row in pairs for seed in seeds[1:]] +
        [Request(task, row, seed, chosen[task.name, row][0], fraction)
         for task, row, fraction in few for seed in seeds])
    seed_runs = runs[:len(pairs) * (len(seeds) - 1)]
    few_runs = iter(runs[len(seed_runs):])
    few_label = {(task.name, row, fraction): [next(few_runs) for _ in seeds]
                 for task, row, fraction in few}
    records = collections.OrderedDict((t.name, collections.OrderedDict())
                                      for t in tasks)
    for index, (task, row) in enumerate(pairs):
      best_lr, first = chosen[task.name, row]
      per_seed = [first] + seed_runs[index * (len(seeds) - 1):
                                     (index + 1) * (len(seeds) - 1)]
      columns = [k for _, k in task_columns(task)]
      records[task.name][row] = {
          "label": METHOD_ROWS[row].label,
          "learning_rate_grid": {"%g" % lr: v
                                 for lr, v in grids[task.name, row].items()},
          "validation_metric": selection_key(task),
          "chosen_learning_rate": best_lr,
          "seeds": list(seeds),
          "test": summarize_seeds([r["metrics"] for r in per_seed], columns),
          "best_steps": [r["validation"]["best"]["step"] for r in per_seed],
          "validation_histories": [r["validation"]["history"]
                                   for r in per_seed],
          "trainable_percent": per_seed[0]["trainable_percent"],
          "num_train_users": per_seed[0]["plan"]["num_train_users"],
      }
    return records, few_label


def calibration(task, data_dir, finetune_settings, seeds, labelled_fraction=1.0,
                top_k=5):
  """The calibration rows of a task over `seeds` (baselines.py).

  The training and validation rows are planned exactly as
  peterrec_finetune plans them for the same options and seed.
  """
  metadata = data_loader.load_metadata(data_dir)
  users = data_loader.read_finetune_users(metadata["paths"]["train"])
  classification = task.kind == "classification"
  per_seed = []
  num_train_users = None
  for seed in seeds:
    train, validation = data_loader.carve_training_rows(
        users, finetune_settings["validation_fraction"],
        by=metadata.get("split_by", "row"),
        labelled_fraction=labelled_fraction,
        seed=finetune_settings["split_seed"], labelled_seed=seed)
    num_train_users = len(np.unique(users[train]))
    per_seed.append(baselines.calibration_rows(
        metadata, classification, train, validation,
        eval_batch_size=finetune_settings["eval_batch_size"], top_k=top_k,
        seed=seed))
  columns = [k for _, k in task_columns(task, top_k)]
  return {
      "num_train_users": num_train_users,
      "reference": {"label": CALIBRATION_ROWS["reference"],
                    "test": summarize_seeds([r["reference"]
                                             for r in per_seed], columns)},
      "linear": {"label": CALIBRATION_ROWS["linear"],
                 "test": summarize_seeds([r["linear"] for r in per_seed],
                                         columns),
                 "selection": [r["linear_selection"] for r in per_seed]},
  }


class _Deferred(object):
  """A call made when its result is first asked for (a Future's `result`)."""

  def __init__(self, function, *args, **kwargs):
    self._call = lambda: function(*args, **kwargs)
    self._result = None
    self._done = False

  def result(self):
    if not self._done:
      self._result, self._done = self._call(), True
    return self._result


@contextlib.contextmanager
def calibration_jobs(tasks, finetune_dirs, finetune_settings, seeds,
                     fractions, background=False):
  """{(task name, fraction): job}: the calibration rows, `job.result()`.

  With `background`, every job starts at once in a process of its own,
  beside the fine-tuning workers, instead of later with the cores idle;
  otherwise each is computed when first asked for.
  """
  keys = [(task, fraction) for task in tasks for fraction in fractions]
  if not background:
    yield collections.OrderedDict(
        ((task.name, fraction), _Deferred(
            calibration, task, finetune_dirs[task.name], finetune_settings,
            seeds, labelled_fraction=fraction)) for task, fraction in keys)
    return
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(
      1, mp_context=context, initializer=_quiet_worker) as pool:
    yield collections.OrderedDict(
        ((task.name, fraction), pool.submit(
            calibration, task, finetune_dirs[task.name], finetune_settings,
            seeds, labelled_fraction=fraction)) for task, fraction in keys)


# ---------------------------------------------------------------------------
# The table and the figures
# ---------------------------------------------------------------------------


def task_columns(task, top_k=5):
  """[(column header, metric key)] of a task."""
  if task.kind == "classification":
    return [("%s Acc" % task.name, "accuracy")]
  return [("%s MRR@%d" % (task.name, top_k), "mrr@%d" % top_k),
          ("%s HR@%d" % (task.name, top_k), "hr@%d" % top_k)]


def format_table(tasks, rows, records, digits=4, top_k=5):
  """The markdown table: rows = methods and calibration rows, columns = task
  metrics as mean +- sd over the seeds (the value alone for one seed: it
  has no standard deviation), + the trainable percentage.

  Args:
    tasks: [Task].
    rows: row keys (of METHOD_ROWS or CALIBRATION_ROWS), in order.
    records: {task name: {row key: record with "label", "test" (see
      summarize_seeds) and optionally "trainable_percent"}}.

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
    label = None
    values = []
    percents = []
    for task in tasks:
      record = records.get(task.name, {}).get(row)
      if record is not None:
        label = record["label"]
        if record.get("trainable_percent") is not None:
          percents.append(record["trainable_percent"])
      for _, key in task_columns(task, top_k):
        if record is None or key not in record["test"]:
          values.append("-")
        else:
          cell = record["test"][key]
          if len(cell["values"]) < 2:
            values.append("%.*f" % (digits, cell["mean"]))
          else:
            values.append("%.*f ± %.*f" % (digits, cell["mean"], digits,
                                           cell["sd"]))
    if label is None:
      continue
    if not percents:
      values.append("-")
    elif max(percents) - min(percents) < 0.05:
      values.append("%.2f" % percents[0])
    else:
      values.append(" / ".join("%.2f" % p for p in percents))
    lines.append("| " + " | ".join([label] + values) + " |")
  return "\n".join(lines)


def _save_panels(path, tasks, draw, title, xlabel, ylabel, log_x=False):
  """One panel per task, `draw(axis, task, metric_key)` plotting into it."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  figure, axes = pyplot.subplots(1, len(tasks), squeeze=False,
                                 figsize=(5.5 * len(tasks), 4))
  for axis, task in zip(axes[0], tasks):
    key = selection_key(task)
    draw(axis, task, key)
    if log_x:
      axis.set_xscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel % key)
    axis.set_title(title % task.name)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  pyplot.close(figure)
  return path


def write_figures(output_dir, tasks, records, few_label_records):
  """PNG figures: validation curves, and the metric against labelled users.

  Returns:
    [paths written].
  """
  paths = []

  def draw_curves(axis, task, key):
    for row in CURVE_ROWS:
      record = records[task.name].get(row)
      if record is not None:
        history = record["validation_histories"][0]
        axis.plot([h["step"] for h in history],
                  [h["metrics"][key] for h in history], marker=".",
                  label="%s (lr %g)" % (record["label"],
                                        record["chosen_learning_rate"]))

  def draw_few_labels(axis, task, key):
    for points in few_label_records[task.name].values():
      points = sorted(points, key=lambda p: p["num_train_users"])
      axis.errorbar([p["num_train_users"] for p in points],
                    [p["test"][key]["mean"] for p in points],
                    yerr=[p["test"][key]["sd"] for p in points],
                    marker="o", capsize=3, label=points[0]["label"])

  if any(r in records[t.name] for r in CURVE_ROWS for t in tasks):
    paths.append(_save_panels(
        os.path.join(output_dir, "convergence.png"), tasks, draw_curves,
        "%s: convergence (first seed)", "fine-tuning step",
        "validation %s"))
  if few_label_records:
    paths.append(_save_panels(
        os.path.join(output_dir, "few_labels.png"), tasks, draw_few_labels,
        "%s: few labels", "labelled training users",
        "test %s (mean ± sd over seeds)", log_x=True))
  return paths


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def _settings(profile, pretrain_overrides, finetune_overrides):
  pretrain_settings = dict(profile["pretrain"])
  pretrain_settings.update({k: v for k, v in (pretrain_overrides or {}).items()
                            if v is not None})
  pretrain_settings["dilations"] = [int(d) for d in
                                    pretrain_settings["dilations"]]
  finetune_settings = dict(profile["finetune"])
  finetune_settings.update({k: v for k, v in
                            (finetune_overrides or {}).items()
                            if v is not None})
  return pretrain_settings, finetune_settings


def _check_rows(rows):
  unknown = sorted(set(rows) - set(METHOD_ROWS))
  if unknown:
    raise ValueError("unknown methods %s (known: %s)" %
                     (unknown, list(METHOD_ROWS)))


def pretrain_backbones(output_dir, pretrain_data, encoders, settings, seed,
                       log, command, workers=1):
  """Pretrains each backbone the rows need, in parallel worker processes
  when `workers` > 1 (one thread each, as the fine-tuning runs). Returns
  {encoder: info dict}."""
  if workers > 1 and len(encoders) > 1:
    settings = dict(settings, intra_op_threads=1, inter_op_threads=1)
    with concurrent.futures.ProcessPoolExecutor(
        min(workers, len(encoders)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_quiet_worker) as pool:
      # The workers log with print: the table's own `log` may not pickle.
      outcomes = list(pool.map(
          pretrain, *zip(*[(output_dir, pretrain_data, settings, seed, print,
                            command, encoder) for encoder in encoders])))
  else:
    outcomes = [pretrain(output_dir, pretrain_data, settings, seed, log,
                         command, encoder) for encoder in encoders]
  backbones = collections.OrderedDict()
  for encoder, (model_dir, metrics, seconds, _) in zip(encoders, outcomes):
    backbones[encoder] = {
        "model_dir": model_dir, "metrics": metrics,
        "seconds_this_run": round(seconds, 1),
        "checkpoint": checkpoint_lib.resolve_checkpoint(model_dir),
        "id": _read_json(os.path.join(model_dir, CELL_FILE))}
  return backbones


def few_label_points(tasks, few_rows, records, few_label, fractions,
                     calibrations):
  """The few-label series of each row, the full-label point first.

  Args:
    few_label: {(task name, row, fraction): [metrics per seed]}
      (Runner.select_and_repeat).
    calibrations: {(task name, fraction): calibration() result}.

  Returns:
    {task name: {row key: [point]}}, a point being {"label", "fraction",
    "num_train_users", "test"}; the linear calibration row as "linear".
  """
  points = collections.OrderedDict()
  for task in tasks:
    series = points[task.name] = collections.OrderedDict()
    columns = [k for _, k in task_columns(task)]
    for row in few_rows:
      record = records[task.name][row]
      series[row] = [{"label": record["label"], "fraction": 1.0,
                      "num_train_users": record["num_train_users"],
                      "test": record["test"]}]
      for fraction in fractions:
        per_seed = few_label[task.name, row, fraction]
        series[row].append({
            "label": record["label"], "fraction": fraction,
            "num_train_users": per_seed[0]["plan"]["num_train_users"],
            "learning_rate": record["chosen_learning_rate"],
            "test": summarize_seeds([r["metrics"] for r in per_seed],
                                    columns)})
    series["linear"] = [
        {"label": CALIBRATION_ROWS["linear"], "fraction": fraction,
         "num_train_users": calibrations[task.name, fraction][
             "num_train_users"],
         "test": calibrations[task.name, fraction]["linear"]["test"]}
        for fraction in [1.0] + list(fractions)]
  return points


def few_label_table(tasks, points, fraction):
  """format_table of the few-label rows at one fraction."""
  records = {t.name: {row: next(p for p in series if p["fraction"] == fraction)
                      for row, series in points[t.name].items()}
             for t in tasks}
  rows = list(points[tasks[0].name])
  return format_table(tasks, rows, records)


def reproduce(dataset, output_dir, data_root=None, pretrain_csv=None,
              finetune_csvs=(), classification_tasks=(), methods=None,
              task_names=None, pretrain_overrides=None,
              finetune_overrides=None, learning_rates=None, seeds=None,
              few_label_fractions=None, pretrain_seed=1, demo_seed=0,
              demo_options=None, figures=True, workers=None, quiet_tf=True,
              log=print, command=None):
  """Everything `main` does; returns the results dict (also in results.json).

  `command` is recorded in results.json (main passes its command line).
  None for methods, learning_rates, seeds and few_label_fractions means
  the dataset profile's.
  """
  wall_start = time.time()
  if dataset not in PROFILES:
    raise ValueError("dataset must be one of %s, got %r" % (DATASETS,
                                                             dataset))
  profile = PROFILES[dataset]
  rows = list(methods or profile["rows"])
  _check_rows(rows)
  learning_rates = [float(lr) for lr in
                    (learning_rates or profile["learning_rates"])]
  seeds = [int(s) for s in (seeds or profile["seeds"])]
  fractions = [float(f) for f in (profile["few_label_fractions"]
                                  if few_label_fractions is None
                                  else few_label_fractions)]
  pretrain_settings, finetune_settings = _settings(
      profile, pretrain_overrides, finetune_overrides)
  os.makedirs(output_dir, exist_ok=True)
  if quiet_tf:
    logging.set_verbosity(logging.WARNING)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)

  log("[%s] preparing data in %s" % (dataset, output_dir))
  csv_path, tasks, train_only_csv = prepare_csvs(
      dataset, output_dir, data_root, pretrain_csv, finetune_csvs,
      classification_tasks, demo_seed, demo_options,
      profile.get("pretrain_window_stride", 0))
  if task_names:
    missing = sorted(set(task_names) - {t.name for t in tasks})
    if missing:
      raise ValueError("unknown tasks %s (this dataset has %s)" %
                       (missing, [t.name for t in tasks]))
    tasks = [t for t in tasks if t.name in task_names]
  pretrain_data, finetune_dirs = convert_datasets(
      output_dir, csv_path, tasks, profile["pretrain_test_fraction"],
      profile["finetune_test_fraction"], profile["split_by"], train_only_csv)
  data = {"pretrain": _data_summary(pretrain_data)}
  for task in tasks:
    data[task.name] = _data_summary(finetune_dirs[task.name])
    log("[%s] task %s (%s): %d training / %d test examples, %d targets, "
        "split by %s" % (dataset, task.name, task.kind,
                         data[task.name]["num_train"],
                         data[task.name]["num_test"],
                         data[task.name]["target_vocab_size"] - 1,
                         profile["split_by"]))

  encoders = [e for e in ("nextitnet", "grec")
              if any(METHOD_ROWS[r].backbone == e for r in rows)]
  if workers is None:
    workers = profile.get("parallel_runs", 1)
  backbones = pretrain_backbones(output_dir, pretrain_data, encoders,
                                 pretrain_settings, pretrain_seed, log,
                                 command, workers)
  runner = Runner(output_dir, finetune_dirs, data,
                  {e: b["checkpoint"] for e, b in backbones.items()},
                  {e: b["id"] for e, b in backbones.items()},
                  finetune_settings, log, workers=workers)
  few_rows = [r for r in FEW_LABEL_ROWS if r in rows] if fractions else []
  runner.total = len(tasks) * (
      len(rows) * (len(learning_rates) + len(seeds) - 1) +
      len(few_rows) * len(fractions) * len(seeds))
  with calibration_jobs(tasks, finetune_dirs, finetune_settings, seeds,
                        [1.0] + (fractions if few_rows else []),
                        background=workers > 1) as calibrations:
    records, few_label = runner.select_and_repeat(
        tasks, rows, learning_rates, seeds, few_rows, fractions)
    for task in tasks:
      log("[%s] task %s: calibration rows" % (dataset, task.name))
      calibrated = calibrations[task.name, 1.0].result()
      records[task.name] = collections.OrderedDict(
          [(row, calibrated[row]) for row in CALIBRATION_ROWS] +
          list(records[task.name].items()))
    few_labels = None
    if few_rows:
      few_labels = few_label_points(
          tasks, few_rows, records, few_label, fractions,
          {key: job.result() for key, job in calibrations.items()})
  figure_paths = (write_figures(output_dir, tasks, records, few_labels)
                  if figures else [])

  table_rows = list(CALIBRATION_ROWS) + rows
  table = format_table(tasks, table_rows, records)
  wall = time.time() - wall_start
  title = ("%s: %s; test splits %s (split by %s); backbones %s, %d "
           "channels, pretrained %d steps" % (
               dataset, ", ".join("%s = %s" % (t.name, t.kind)
                                  for t in tasks),
               ", ".join("%s %d" % (t.name, data[t.name]["num_test"])
                         for t in tasks), profile["split_by"],
               "/".join(encoders), pretrain_settings["channels"],
               pretrain_settings["num_train_steps"]))
  notes = [
      ("Mean ± sample standard deviation over seeds %s (initialisation, "
       "shuffling, negatives); the standard error of a mean is sd/sqrt(%d)."
       % (seeds, len(seeds))) if len(seeds) > 1 else
      ("One seed (%d): no standard deviation or standard error; "
       "--seeds=1,2,3 gives them." % seeds[0]),
      "Protocol: %d%% of the training users are a validation split (seed "
      "%d); every run keeps its best validation checkpoint (validated every "
      "%s steps, at most %d steps, %s); each row's learning rate is the one "
      "of %s with the best validation %s on seed %d. Chosen: %s." % (
          100 * finetune_settings["validation_fraction"],
          finetune_settings["split_seed"],
          finetune_settings.get("eval_every_steps") or "a tenth of the",
          finetune_settings["num_train_steps"],
          ("early stop after %d validations below the best" %
           finetune_settings["early_stopping_patience"]
           if finetune_settings.get("early_stopping_patience")
           else "no early stopping"),
          learning_rates, "/".join(sorted({selection_key(t) for t in tasks})),
          seeds[0], "; ".join(
              "%s %s %g" % (t.name, records[t.name][r]["label"],
                            records[t.name][r]["chosen_learning_rate"])
              for t in tasks for r in rows)),
      "Recommendation: MRR@5/HR@5 of the positive among it and 99 uniformly "
      "sampled negative targets; classification: accuracy over all classes. "
      "Trainable % counts the head.",
      "Calibration rows are not methods of the paper: the user-independent "
      "reference (majority class / training popularity: the ceiling of the "
      "causal [CLS]-at-start ablation) and a linear bag-of-source-items "
      "model tuned on the same validation split (baselines.py).",
  ]
  text = "\n".join([title, "", table, ""] + notes) + "\n"
  if few_labels:
    for fraction in fractions:
      text += "\nFew labels: %g of the training users (validation and test " \
              "splits unchanged; each row's chosen learning rate)\n\n%s\n" % (
                  fraction, few_label_table(tasks, few_labels, fraction))
  training_utils.write_text_atomic(os.path.join(output_dir, TABLE_FILE), text)
  results = {
      "dataset": dataset,
      "command": command or common.python_call(
          "reproduce_tables.reproduce", dataset=dataset,
          output_dir=output_dir, methods=methods, task_names=task_names,
          pretrain_overrides=pretrain_overrides,
          finetune_overrides=finetune_overrides,
          learning_rates=learning_rates, seeds=seeds,
          few_label_fractions=fractions, pretrain_seed=pretrain_seed,
          demo_seed=demo_seed, demo_options=demo_options),
      "tasks": [t._asdict() for t in tasks],
      "methods": rows,
      "pretrain": {"settings": pretrain_settings, "backbones": backbones},
      "finetune_settings": finetune_settings,
      "learning_rates": learning_rates,
      "seeds": seeds,
      "split_by": profile["split_by"],
      "data": data,
      "rows": records,
      "few_labels": few_labels,
      "figures": figure_paths,
      "table_markdown": table,
      "finetune_runs_this_run": runner.count,
      "finetune_seconds_this_run": round(runner.seconds, 1),
      "wall_seconds_this_run": round(wall, 1),
  }
  training_utils.write_json_atomic(os.path.join(output_dir, RESULTS_FILE),
                                   results)
  log("")
  log(text)
  log("Table: %s; figures: %s; all figures: %s; wall time of this run %.0f s"
      % (os.path.join(output_dir, TABLE_FILE), ", ".join(figure_paths) or "-",
         os.path.join(output_dir, RESULTS_FILE), wall))
  return results


def _data_summary(directory):
  metadata = data_loader.load_metadata(directory)
  keys = ("num_train", "num_test", "item_vocab_size", "target_vocab_size",
          "seq_length", "source_length", "fingerprint", "num_unknown_items",
          "num_train_only_sequences")
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
  flags.DEFINE_list("methods", None, "Table rows (default: the dataset's; "
                    "known: %s)." % ", ".join(METHOD_ROWS), **fv)
  flags.DEFINE_list("tasks", [], "Only these tasks (default: all).", **fv)
  flags.DEFINE_list("learning_rates", None, "Fine-tuning learning-rate grid, "
                    "chosen per row on validation (default: the dataset's).",
                    **fv)
  flags.DEFINE_list("seeds", None, "Fine-tuning seeds of every row "
                    "(default: the dataset's).", **fv)
  flags.DEFINE_list("few_label_fractions", None, "Few-label runs at these "
                    "fractions of the training users (default: the "
                    "dataset's; empty: none).", **fv)
  flags.DEFINE_integer("pretrain_steps", None, "Pretraining steps "
                       "(default: the dataset's profile).", **fv)
  flags.DEFINE_integer("channels", None, "Backbone channels.", **fv)
  flags.DEFINE_list("dilations", None, "Backbone dilations.", **fv)
  flags.DEFINE_integer("pretrain_batch_size", None, "Pretraining batch.",
                       **fv)
  flags.DEFINE_integer("pretrain_seed", 1, "Seed of the pretraining runs.",
                       **fv)
  flags.DEFINE_integer("finetune_steps", None, "Most fine-tuning steps of "
                       "a run (early stopping may end it sooner).", **fv)
  flags.DEFINE_integer("finetune_batch_size", None, "Fine-tuning batch.",
                       **fv)
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
      pretrain_overrides={"num_train_steps": f.pretrain_steps,
                          "channels": f.channels, "dilations": f.dilations,
                          "train_batch_size": f.pretrain_batch_size},
      finetune_overrides={"num_train_steps": f.finetune_steps,
                          "train_batch_size": f.finetune_batch_size},
      learning_rates=f.learning_rates, seeds=f.seeds,
      few_label_fractions=(None if f.few_label_fractions is None else
                           [x for x in f.few_label_fractions if x]),
      pretrain_seed=f.pretrain_seed, demo_seed=f.demo_seed,
      command=" ".join(["python"] + sys.argv))

if __name__ == "__main__":
  define_flags()
  app.run(main)
