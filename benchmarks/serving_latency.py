r"""Serving: latency for one user and throughput at batch 256, three ways.

On the generated data of a preset (benchmarks/workloads.py), a fine-tuned
PeterRec model (serial patches; random weights, which cost the same) is
exported with `serving.export_saved_model` and answered:

  session     a plain tf.compat.v1 session over `serving.build_serving_graph`
              with the checkpoint restored: the baseline;
  Predictor   `serving.Predictor`, the project's serving API (the SavedModel
              loaded into a session);
  signature   TensorFlow 2's own way: `tf.saved_model.load(...)
              .signatures["serving_default"]`, called eagerly.

Each way answers batches of raw item-id strings; windows are interleaved
(one window of each way per repetition, rotating order), and each window
records the CPU other processes used (benchmarks/cpu_monitor.py).

  .venv/bin/python -m benchmarks.serving_latency                 # demo size
  .venv/bin/python -m benchmarks.serving_latency --preset=paper
"""
import os
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

import data_loader
import serving
from benchmarks import cpu_monitor
from benchmarks import workloads

WAYS = ("session", "Predictor", "signature")
FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_enum("preset", "demo", sorted(workloads.PRESETS),
                    "Sizes (benchmarks/workloads.py).")
  flags.DEFINE_integer("reps", 3, "Windows of each way and batch size.")
  flags.DEFINE_integer("single_calls", 200, "Calls of batch 1 per window.")
  flags.DEFINE_integer("batch_calls", 20, "Calls of --batch_size per window.")
  flags.DEFINE_integer("batch_size", 256, "The throughput batch.")
  flags.DEFINE_integer("top_k", 10, "Targets per user.")
  flags.DEFINE_string("work_dir", None, "Keep the generated data here.")
  flags.DEFINE_string("json_output", None, "Write every window here.")


def _serving_arguments(preset, metadata, top_k):
  config = workloads.model_config(preset, causal=True)
  item_tokens = data_loader.Vocabulary.load(
      metadata["paths"]["item_vocab"]).tokens
  target_tokens = data_loader.Vocabulary.load(
      metadata["paths"]["target_vocab"]).tokens
  return dict(config=config, method="peterrec", insertion="serial",
              cardinality=1, task="recommendation", item_tokens=item_tokens,
              target_tokens=target_tokens,
              source_length=metadata["source_length"], top_k=top_k)


def write_model(preset, metadata, work_dir, top_k):
  """A fine-tuned checkpoint (random weights) and its SavedModel.

  Returns:
    (checkpoint prefix, SavedModel directory).
  """
  arguments = _serving_arguments(preset, metadata, top_k)
  checkpoint = os.path.join(work_dir, "finetuned", "model.ckpt")
  with tf.Graph().as_default():
    serving.build_serving_graph(**arguments)
    saver = tf.compat.v1.train.Saver(tf.compat.v1.global_variables())
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      saver.save(session, checkpoint, write_meta_graph=False)
  saved_model = os.path.join(work_dir, "saved_model")
  serving.export_saved_model(
      saved_model, checkpoint, arguments["config"], "peterrec", "serial", 1,
      "recommendation", metadata["paths"]["item_vocab"],
      metadata["paths"]["target_vocab"], metadata["source_length"], top_k)
  return checkpoint, saved_model


class PlainSession(object):
  """The serving graph in a session of its own, the checkpoint restored."""

  def __init__(self, preset, metadata, checkpoint, top_k):
    self._graph = tf.Graph()
    with self._graph.as_default():
      inputs, self._outputs = serving.build_serving_graph(
          **_serving_arguments(preset, metadata, top_k))
      self._input = inputs[serving.SERVING_INPUT]
      saver = tf.compat.v1.train.Saver(tf.compat.v1.global_variables())
      self._session = tf.compat.v1.Session(graph=self._graph)
      saver.restore(self._session, checkpoint)
      self._session.run(tf.compat.v1.tables_initializer())

  def __call__(self, item_ids):
    return self._session.run(self._outputs, {self._input: item_ids})


class Signature(object):
  """The SavedModel's serving signature as TensorFlow 2 calls it."""

  def __init__(self, saved_model):
    self._loaded = tf.saved_model.load(saved_model)
    self._function = self._loaded.signatures[serving.SIGNATURE]

  def __call__(self, item_ids):
    return {name: value.numpy() for name, value in self._function(
        **{serving.SERVING_INPUT: tf.constant(item_ids)}).items()}


def user_batches(metadata, batch_size, count, seed=0):
  """`count` batches of `batch_size` random histories of item-id strings."""
  tokens = np.array(data_loader.Vocabulary.load(
      metadata["paths"]["item_vocab"]).tokens[1:], dtype=object)
  rng = np.random.default_rng(seed)
  return [tokens[rng.integers(0, len(tokens), size=(
      batch_size, metadata["source_length"]))] for _ in range(count)]


def time_window(answer, batches):
  """Seconds of each call, and the window's CPU record."""
  seconds = []
  window = cpu_monitor.CpuWindow().start()
  for batch in batches:
    start = time.perf_counter()
    answer(batch)
    seconds.append(time.perf_counter() - start)
  window.stop()
  return seconds, window


def measure(answers, metadata, reps, single_calls, batch_calls, batch_size):
  """Interleaved windows; returns a list of window records."""
  single = user_batches(metadata, 1, single_calls, seed=1)
  large = user_batches(metadata, batch_size, batch_calls, seed=2)
  for answer in answers.values():  # warm-up: first calls build kernels
    for batch in single[:10] + large[:2]:
      answer(batch)
  records = []
  for rep in range(reps):
    order = list(answers)[rep % len(answers):] + list(answers)[
        :rep % len(answers)]
    for way in order:
      for size, batches in ((1, single), (batch_size, large)):
        seconds, window = time_window(answers[way], batches)
        records.append({"way": way, "rep": rep, "batch": size,
                        "seconds": seconds,
                        "other_cores": window.other_cores})
  return records


def summarize(records, batch_size):
  """One row per way: p50/p99 latency at batch 1, users/s at the batch."""
  rows = []
  for way in WAYS:
    single = [s for r in records if r["way"] == way and r["batch"] == 1
              for s in r["seconds"]]
    large = [len(r["seconds"]) * batch_size / sum(r["seconds"])
             for r in records if r["way"] == way and r["batch"] == batch_size]
    others = [r["other_cores"] for r in records
              if r["way"] == way and r["other_cores"] is not None]
    rows.append({
        "way": way, "p50_ms": 1000 * float(np.percentile(single, 50)),
        "p99_ms": 1000 * float(np.percentile(single, 99)),
        "users_per_sec": float(np.median(large)),
        "users_per_sec_range": [float(min(large)), float(max(large))],
        "max_other_cores": max(others) if others else None})
  return rows


def format_table(rows, batch_size):
  lines = ["| way | batch 1: p50 ms | p99 ms | batch %d: users/s [min-max] "
           "| other processes, cores (max) |" % batch_size,
           "|---|---:|---:|---:|---:|"]
  for row in rows:
    other = row["max_other_cores"]
    lines.append("| %s | %.2f | %.2f | %.0f [%.0f-%.0f] | %s |" % (
        row["way"], row["p50_ms"], row["p99_ms"], row["users_per_sec"],
        row["users_per_sec_range"][0], row["users_per_sec_range"][1],
        "-" if other is None else "%.2f%s" % (
            other, " (noisy)" if other > cpu_monitor.NOISY_OTHER_CORES
            else "")))
  return "\n".join(lines)


def main(argv):
  del argv
  preset = workloads.PRESETS[FLAGS.preset]
  with workloads.generated_data(preset, FLAGS.work_dir) as (data, work_dir):
    metadata = data["finetune"]
    checkpoint, saved_model = write_model(preset, metadata, work_dir,
                                          FLAGS.top_k)
    answers = {"session": PlainSession(preset, metadata, checkpoint,
                                       FLAGS.top_k),
               "Predictor": serving.Predictor(saved_model),
               "signature": Signature(saved_model)}
    records = measure(answers, metadata, FLAGS.reps, FLAGS.single_calls,
                      FLAGS.batch_calls, FLAGS.batch_size)
  rows = summarize(records, FLAGS.batch_size)
  workloads.report(
      "Serving, preset %s (%d channels, %d targets, top %d), %d windows of "
      "each way" % (FLAGS.preset, preset.channels, preset.num_targets,
                    FLAGS.top_k, FLAGS.reps),
      format_table(rows, FLAGS.batch_size), FLAGS.json_output,
      {"preset": FLAGS.preset, "rows": rows, "records": records})


if __name__ == "__main__":
  define_flags()
  app.run(main)
