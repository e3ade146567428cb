r"""Evaluation throughput: the scripts' Estimator.evaluate vs the feed_dict way.

Two workloads on the generated data of a preset (benchmarks/workloads.py):

  pretrain_full_ranking  NextItNet: the held-out last item of each sequence
                         ranked among all items (MRR@5, HR@5, NDCG@5);
  finetune_sampled       PeterRec (serial): each test row's positive ranked
                         among 99 uniform negatives (the paper's protocol).

Both evaluate the model of a short training run of the script's own
`model_fn` (the checkpoint in its model_dir), and both read the training
split as the evaluation input: the generated test splits are too small to
time.

  (a) feed_dict  the original scripts' way: numpy batches fed to a session
                 over the same `ops/` graph; pretraining fetches the
                 probabilities of every item and ranks each row in numpy
                 (`np.argsort`, as the original's `sample_top_k`; only the
                 last position, where the original computes them at every
                 position, and one cut-off where it sorts twice: (a) is
                 faster than the original); fine-tuning draws the 99
                 negatives of each row in Python (`random_negs`), feeds
                 them, fetches the top 5 and finds the positive in Python;
  (b) estimator  `Estimator.evaluate` with the script's `model_fn` and
                 `input_fn` (metrics and negatives in the graph), as
                 `peterrec_finetune.py` / `nextitnet_pretrain.py` run it.

Reported per way: steady sequences/s (after the first batch; CPU of other
processes measured over the same window) and the whole call's seconds
(graph, session and restore included), median over --reps interleaved
repetitions.

  .venv/bin/python -m benchmarks.evaluation                 # demo size
  .venv/bin/python -m benchmarks.evaluation --preset=paper

Thread pools as in benchmarks/throughput.py: each session has its own
intra-op pool (TF_OVERRIDE_GLOBAL_THREADPOOL=1, set before TensorFlow is
imported), (b) the scripts' session config, (a) TensorFlow's defaults.
"""
import os
os.environ.setdefault("TF_OVERRIDE_GLOBAL_THREADPOOL", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import shutil
import statistics
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

import data_loader
import finetuning
import nextitnet_pretrain
import peterrec_finetune
import training_utils
from benchmarks import cpu_monitor
from benchmarks import feed_dict_baseline
from benchmarks import pipeline
from benchmarks import workloads
from ops import heads
from ops import modeling
from ops import pretrain as pretrain_ops

WORKLOADS = ("pretrain_full_ranking", "finetune_sampled")
NUM_NEGATIVES = 99
TOP_K = 5
FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_enum("preset", "demo", sorted(workloads.PRESETS),
                    "Sizes (benchmarks/workloads.py).")
  flags.DEFINE_list("workloads", list(WORKLOADS), "Which workloads.")
  flags.DEFINE_integer("reps", 3, "Interleaved repetitions of each way.")
  flags.DEFINE_integer("eval_batch_size", 256, "Evaluation batch size.")
  flags.DEFINE_integer("max_sequences", 8192,
                       "Sequences evaluated per repetition.")
  flags.DEFINE_string("work_dir", None, "Keep the generated data here.")
  flags.DEFINE_string("json_output", None, "Write every repetition here.")


class _Setup(object):
  """What both ways of one workload share: model, data, checkpoint."""

  def __init__(self, workload, preset, data, work_dir, batch_size,
               max_sequences):
    self.workload = workload
    self.batch_size = batch_size
    self.pretraining = workload.startswith("pretrain")
    self.metadata = data["pretrain" if self.pretraining else "finetune"]
    self.config = workloads.model_config(preset, causal=True)
    self.input_file = self.metadata["paths"]["train"]
    self.num_sequences = min(max_sequences, self.metadata["num_train"])
    self.num_sequences -= self.num_sequences % batch_size
    if self.pretraining:
      self.model_fn = nextitnet_pretrain.model_fn_builder(
          self.config, "sampled", 0.001,
          num_sampled=workloads.default_num_sampled(preset), top_k=TOP_K)
    else:
      self.model_fn = peterrec_finetune.model_fn_builder(
          self.config, data["backbones"][True], "peterrec", "serial", 1,
          "recommendation", self.metadata["target_vocab_size"], top_k=TOP_K)
    self.model_dir = os.path.join(work_dir, "model_%s" % workload)
    shutil.rmtree(self.model_dir, ignore_errors=True)
    self.estimator = training_utils.make_estimator(
        self.model_fn, self.model_dir, save_graph_def=False)
    self.estimator.train(self.input_fn(is_training=True), max_steps=2)
    self.checkpoint = tf.train.latest_checkpoint(self.model_dir)

  def input_fn(self, is_training=False):
    """The script's input_fn over the first `num_sequences` records."""
    if self.pretraining:
      input_fn = nextitnet_pretrain.input_fn_builder(
          self.input_file, self.metadata["seq_length"], self.batch_size,
          is_training, "nextitnet", self.config.item_size, seed=1)
    else:
      mask = None if is_training else (
          np.arange(self.metadata["num_train"]) < self.num_sequences)
      input_fn = data_loader.finetune_input_fn_builder(
          self.input_file, self.metadata["source_length"], True,
          self.batch_size, is_training,
          self.metadata["target_vocab_size"],
          1 if is_training else NUM_NEGATIVES, seed=1, row_mask=mask)
    if is_training or not self.pretraining:
      return input_fn
    return lambda params: input_fn(params).take(
        self.num_sequences // self.batch_size)


class _SteadyWindowHook(tf.estimator.SessionRunHook):
  """Times the batches after the first one."""

  def __init__(self):
    self.window = None
    self.batches = 0

  def after_run(self, run_context, run_values):
    self.batches += 1
    if self.batches == 1:
      self.window = cpu_monitor.CpuWindow().start()

  def end(self, session):
    self.window.stop()


def estimator_way(setup):
  """(b): returns (steady sequences/s, whole call s, other cores, metrics)."""
  hook = _SteadyWindowHook()
  started = time.perf_counter()
  metrics = setup.estimator.evaluate(setup.input_fn(), hooks=[hook],
                                     checkpoint_path=setup.checkpoint)
  whole = time.perf_counter() - started
  steady = (hook.batches - 1) * setup.batch_size / hook.window.seconds
  return steady, whole, hook.window.other_cores, metrics


def _feed_dict_graph(setup):
  """(input placeholders, fetched tensor) of the original's eval graph."""
  config = setup.config.replace(**modeling.ORIGINAL_EXECUTION)
  if setup.pretraining:
    itemseq = tf.compat.v1.placeholder(
        tf.int32, [None, setup.metadata["seq_length"]])
    logits, _ = pretrain_ops.evaluation_logits(itemseq, config, "sampled")
    return [itemseq], tf.nn.softmax(logits)
  context = tf.compat.v1.placeholder(tf.int32, [None, None])
  candidates = tf.compat.v1.placeholder(tf.int32, [None, NUM_NEGATIVES + 1])
  user, table = finetuning.build_finetune_model(
      context, config, "peterrec", "serial", 1,
      setup.metadata["target_vocab_size"])
  scores = heads.candidate_scores(user, table, candidates)
  return [context, candidates], tf.nn.top_k(scores, k=TOP_K)[1]


def _read_batches(setup):
  """Numpy batches of the evaluated rows, read before the timing."""
  if setup.pretraining:
    rows = feed_dict_baseline.read_int_records(
        setup.input_file, {"itemseq": setup.metadata["seq_length"]})["itemseq"]
  else:
    records = feed_dict_baseline.read_int_records(
        setup.input_file, {"source": setup.metadata["source_length"],
                           "target": 1})
    rows = data_loader.example_rows(records["source"], records["target"],
                                    causal=True)
  rows = rows[:setup.num_sequences]
  return [rows[i:i + setup.batch_size]
          for i in range(0, setup.num_sequences, setup.batch_size)]


def feed_dict_way(setup, rng):
  """(a): returns (steady sequences/s, whole call s, other cores, metrics)."""
  started = time.perf_counter()
  batches = _read_batches(setup)
  graph = tf.Graph()
  with graph.as_default():
    inputs, fetched = _feed_dict_graph(setup)
    saver = tf.compat.v1.train.Saver()
  session = tf.compat.v1.Session(graph=graph, config=pipeline.own_pools())
  saver.restore(session, setup.checkpoint)
  ranks, window = [], None
  target_size = setup.metadata.get("target_vocab_size")
  for n, rows in enumerate(batches):
    if n == 1:
      window = cpu_monitor.CpuWindow().start()
    if setup.pretraining:
      probabilities = session.run(fetched, {inputs[0]: rows})
      for row, label in enumerate(rows[:, -1]):
        if label == 0:  # padding: weight 0 in the scripts' metrics too
          continue
        top = np.argsort(probabilities[row])[::-1][:TOP_K]
        ranks.append({item: i for i, item in enumerate(top)}.get(label))
    else:
      positives = rows[:, -1]
      negatives = [feed_dict_baseline.random_negs(
          1, target_size, NUM_NEGATIVES, positive, rng)
                   for positive in positives]
      candidates = np.concatenate([np.array(negatives),
                                   positives[:, None]], axis=1)
      top = session.run(fetched, {inputs[0]: rows[:, :-1],
                                  inputs[1]: candidates})
      ranks += [{c: i for i, c in enumerate(row)}.get(NUM_NEGATIVES)
                for row in top]
  window.stop()
  session.close()
  whole = time.perf_counter() - started
  steady = (len(batches) - 1) * setup.batch_size / window.seconds
  return steady, whole, window.other_cores, {
      "hr@%d" % TOP_K: float(np.mean([r is not None for r in ranks])),
      "mrr@%d" % TOP_K: float(np.mean([0.0 if r is None else 1.0 / (r + 1)
                                       for r in ranks]))}


def measure(setup, reps):
  """Interleaved repetitions of both ways; a list of records."""
  rng = np.random.default_rng(1)
  records = []
  for rep in range(reps):
    ways = (("a", lambda: feed_dict_way(setup, rng)),
            ("b", lambda: estimator_way(setup)))
    for way, call in (ways if rep % 2 == 0 else ways[::-1]):
      steady, whole, other, metrics = call()
      records.append({"workload": setup.workload, "way": way, "rep": rep,
                      "sequences_per_sec": steady, "whole_seconds": whole,
                      "other_cores": other,
                      "hr": float(metrics["hr@%d" % TOP_K])})
  return records


def format_table(records):
  lines = ["| workload | (a) feed_dict seq/s | (b) estimator seq/s | b/a | "
           "(a) whole call s | (b) whole call s | HR@5 a / b | other "
           "processes, cores (max) |", "|---|---:|---:|---:|---:|---:|---:|"
           "---:|"]
  for workload in dict.fromkeys(r["workload"] for r in records):
    def median(way, key, workload=workload):
      return statistics.median(r[key] for r in records
                               if r["workload"] == workload and
                               r["way"] == way)
    a, b = median("a", "sequences_per_sec"), median("b", "sequences_per_sec")
    other = max((r["other_cores"] or 0.0) for r in records
                if r["workload"] == workload)
    lines.append("| %s | %.0f | %.0f | **%.2fx** | %.1f | %.1f | %.3f / %.3f "
                 "| %.2f |" % (workload, a, b, b / a,
                               median("a", "whole_seconds"),
                               median("b", "whole_seconds"),
                               median("a", "hr"), median("b", "hr"), other))
  return "\n".join(lines)


def main(argv):
  del argv
  tf.compat.v1.disable_eager_execution()
  training_utils.quiet_tensorflow()
  preset = workloads.PRESETS[FLAGS.preset]
  # Before any other session: the Estimator's global inter-op pool.
  pipeline.pin_global_thread_pools(training_utils.session_config())
  records = []
  with workloads.generated_data(preset, FLAGS.work_dir) as (data, work_dir):
    for workload in FLAGS.workloads:
      setup = _Setup(workload, preset, data, work_dir, FLAGS.eval_batch_size,
                     FLAGS.max_sequences)
      records += measure(setup, FLAGS.reps)
  workloads.report(
      "Evaluation throughput, preset %s, batch %d, %d sequences, median of "
      "%d interleaved repetitions" % (FLAGS.preset, FLAGS.eval_batch_size,
                                      FLAGS.max_sequences, FLAGS.reps),
      format_table(records), FLAGS.json_output,
      {"preset": FLAGS.preset, "records": records})


if __name__ == "__main__":
  define_flags()
  app.run(main)
