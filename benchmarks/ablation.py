r"""Measures each optimization of the training step on its own, interleaved.

Every variant below trains the same model on the same generated data in a
raw `tf.compat.v1.Session` (no Estimator, except the "estimator" variant), so
that the effect of one change can be read against its neighbour in the
list. Variants run interleaved, after warm-up, `--reps` times; the table
gives the median steps/s, the median CPU time this process used per step
(robust to other processes: it does not count time spent waiting for a
core) and how many cores other processes used during the windows.

  .venv/bin/python -m benchmarks.ablation --workload=pretrain_nextitnet
  .venv/bin/python -m benchmarks.ablation --workload=finetune_serial \
      --variants=feed_dict,original_graph,time_major,towers,estimator

The numbers in benchmarks/README.md come from this script.

Thread pools: TensorFlow 1 sessions share process-wide thread pools sized
by the first session, so that different thread settings can be compared in
one process this script sets TF_OVERRIDE_GLOBAL_THREADPOOL=1 (each session
gets the intra-op pool its config asks for) and gives each raw session its
own inter-op pool (`use_per_session_threads`); the Estimator's session uses
the global inter-op pool, sized by a first session with the script's config.
"""
import os
os.environ.setdefault("TF_OVERRIDE_GLOBAL_THREADPOOL", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import collections
import contextlib
import gc
import json
import shutil
import tempfile

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

import data_loader
import nextitnet_pretrain
from benchmarks import cpu_monitor
from benchmarks import feed_dict_baseline
from benchmarks import pipeline
from benchmarks import workloads
from ops import layers
from ops import modeling
from ops import networks

FLAGS = flags.FLAGS

# name -> (description, settings). Settings: ModelConfig execution fields,
# "stacked_conv" (the matmul conv as first written: one product over the k
# stacked shifted copies), "threads" (intra, inter), "jit".
ORIGINAL_GRAPH = dict(modeling.ORIGINAL_EXECUTION)
CURRENT = {name: getattr(modeling.ModelConfig(item_size=2), name)
           for name in modeling.ModelConfig.EXECUTION_FIELDS}
# Steps 3-7 use the first matmul formulations (one product over the k
# stacked shifted copies, batch-major), kept in this file.
_STEP3 = dict(ORIGINAL_GRAPH, stacked_conv="strided")
_STEP4 = dict(ORIGINAL_GRAPH, stacked_conv="pad_slice")
_STEP5 = dict(_STEP4, layer_norm_implementation="analytic")
_STEP6 = dict(_STEP5, softmax_implementation="split")
_STEP7 = dict(_STEP6, embedding_gradients="dense")
_STEP8 = dict(CURRENT, towers=1)
VARIANTS = collections.OrderedDict([
    ("feed_dict", ("(a) the original's feed_dict loop, default session",
                   None)),
    ("original_graph", ("tf.data input, original graph (atrous conv, "
                        "moments layer norm, sparse gradients, "
                        "tf.nn.sampled_softmax_loss), threads 1/2",
                        ORIGINAL_GRAPH)),
    ("matmul_strided", ("+ conv as one matmul over k stacked shifted copies "
                        "(strided slices)", _STEP3)),
    ("matmul_pad_slice", ("+ the same copies built with pad(slice): no "
                          "StridedSliceGrad", _STEP4)),
    ("layer_norm", ("+ analytic-gradient layer norm", _STEP5)),
    ("split_softmax", ("+ split sampled softmax", _STEP6)),
    ("dense_gradients", ("+ dense embedding gradients", _STEP7)),
    ("time_major", ("+ time-major conv, one matmul per tap over the "
                    "non-padding rows (current `matmul`), 1 tower", _STEP8)),
    ("towers", ("+ one row-parallel tower per core (= current ops "
                "defaults)", CURRENT)),
    ("conv2d", ("current, but conv2d with dilations",
                dict(CURRENT, conv_implementation="conv2d"))),
    ("threads_default", ("current, default threads (intra 0, inter 0)",
                         dict(CURRENT, threads=(0, 0)))),
    ("threads_2_1", ("current, intra 2 / inter 1", dict(CURRENT,
                                                         threads=(2, 1)))),
    ("threads_2_2", ("current, intra 2 / inter 2", dict(CURRENT,
                                                         threads=(2, 2)))),
    ("threads_1_1", ("current, intra 1 / inter 1", dict(CURRENT,
                                                         threads=(1, 1)))),
    ("threads_1_3", ("current, intra 1 / inter 3", dict(CURRENT,
                                                         threads=(1, 3)))),
    ("towers_3", ("current, 3 towers", dict(CURRENT, towers=3))),
    ("towers_4", ("current, 4 towers", dict(CURRENT, towers=4))),
    ("jit", ("current + XLA auto-clustering (global_jit_level ON_1)",
             dict(CURRENT, jit=True))),
    ("script_session", ("the scripts' model_fn and input_fn in a plain "
                        "session (no Estimator), threads 1/2", None)),
    ("estimator", ("(b) the scripts' Estimator around the current graph",
                   None)),
])
DEFAULT_VARIANTS = list(VARIANTS)


def define_flags():
  flags.DEFINE_enum("workload", "pretrain_nextitnet", list(workloads.WORKLOADS),
                    "Which training step.")
  flags.DEFINE_enum("preset", "demo", sorted(workloads.PRESETS), "Sizes.")
  flags.DEFINE_list("variants", DEFAULT_VARIANTS, "Variants, in order.")
  flags.DEFINE_integer("reps", 3, "Timed repetitions of each variant.")
  flags.DEFINE_integer("steps", None, "Timed steps per window (default: the "
                       "preset's Estimator steps).")
  flags.DEFINE_string("work_dir", None, "Data directory (default temporary).")
  flags.DEFINE_string("json_output", None, "Write the records here too.")


def _stacked_matmul_conv(inputs, weight, bias, dilation, kernel_size, causal,
                         views):
  """One product over the k stacked shifted copies (batch-major).

  views="strided": strided slices of a padded copy (an earlier prototype);
  views="pad_slice": each copy as pad(slice(x)).
  """
  batch_size, seq_length, in_channels = layers.get_shape_list(inputs, 3)
  output_channels = weight.shape[-1]
  total_pad = (kernel_size - 1) * dilation
  pad_left = total_pad if causal else total_pad // 2
  if kernel_size == 1:
    stacked = inputs
  elif views == "strided":
    padded = tf.pad(inputs, [[0, 0], [pad_left, total_pad - pad_left], [0, 0]])
    stacked = tf.concat([padded[:, j * dilation:j * dilation + seq_length, :]
                         for j in range(kernel_size)], axis=-1)
  else:
    copies = []
    for j in range(kernel_size):
      shift = pad_left - j * dilation
      kept = seq_length - abs(shift)
      if shift == 0:
        copies.append(inputs)
      elif kept <= 0:
        copies.append(tf.zeros_like(inputs))
      elif shift > 0:
        copies.append(tf.pad(tf.slice(inputs, [0, 0, 0], [-1, kept, -1]),
                             [[0, 0], [shift, 0], [0, 0]]))
      else:
        copies.append(tf.pad(tf.slice(inputs, [0, -shift, 0], [-1, kept, -1]),
                             [[0, 0], [0, -shift], [0, 0]]))
    stacked = tf.concat(copies, axis=-1)
  flat = tf.reshape(stacked, [-1, kernel_size * in_channels])
  kernel = tf.reshape(weight, [kernel_size * in_channels, output_channels])
  out = tf.matmul(flat, kernel) + bias
  return tf.reshape(out, [batch_size, seq_length, output_channels])


def _stacked_conv1d(views):
  """A stand-in for layers.conv1d (same variables) with a stacked matmul."""

  def conv1d(inputs, output_channels, dilation=1, kernel_size=1,
             causal=False, name="dilated_conv", implementation="atrous",
             reuse=None, time_major=False):
    del implementation
    if time_major:
      raise ValueError("the stacked formulations are batch-major")
    with tf.compat.v1.variable_scope(name, reuse=reuse):
      weight = tf.compat.v1.get_variable(
          "weight", [1, kernel_size, inputs.shape[-1], output_channels],
          initializer=tf.compat.v1.truncated_normal_initializer(
              stddev=0.02, seed=1))
      bias = tf.compat.v1.get_variable(
          "bias", [output_channels],
          initializer=tf.compat.v1.constant_initializer(0.0))
      return _stacked_matmul_conv(inputs, weight, bias, dilation,
                                  kernel_size, causal, views)

  return conv1d


@contextlib.contextmanager
def _patched(settings):
  """Selects the stacked convolutions, which are not in `ops/` any more.

  They run with ModelConfig.conv_implementation "conv2d" (so that the
  backbone stays batch-major) and layers.conv1d replaced.
  """
  saved = layers.conv1d
  if settings.get("stacked_conv"):
    layers.conv1d = _stacked_conv1d(settings["stacked_conv"])
  try:
    yield
  finally:
    layers.conv1d = saved


class _SessionSteps(object):
  """Training steps of a finished graph: `_session` and `_fetches`."""

  def run_steps(self, num_steps):
    for _ in range(num_steps):
      self._session.run(self._fetches)

  def trace_steps(self, num_steps):
    """Runs `num_steps` traced steps; returns their RunMetadata protos."""
    options = tf.compat.v1.RunOptions(
        trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
    traces = []
    for _ in range(num_steps):
      metadata = tf.compat.v1.RunMetadata()
      self._session.run(self._fetches, options=options,
                        run_metadata=metadata)
      traces.append(metadata)
    return traces

  def close(self):
    self._session.close()


class RawSession(_SessionSteps):
  """A tf.data-fed training step of `workload` in a plain session."""

  def __init__(self, workload, preset, data, settings):
    config_fields = {k: settings[k]
                     for k in modeling.ModelConfig.EXECUTION_FIELDS}
    if settings.get("stacked_conv"):
      config_fields["conv_implementation"] = "conv2d"  # see _patched
    self._graph = tf.Graph()
    with self._graph.as_default(), _patched(settings):
      spec = workloads.workload(workload)
      encoder = spec.encoder
      if spec.pretraining:
        meta = data["pretrain"]
        config = workloads.model_config(preset, spec.causal).replace(
            **config_fields)
        input_fn = nextitnet_pretrain.input_fn_builder(
            meta["paths"]["train"], meta["seq_length"], preset.pretrain_batch,
            True, encoder, config.item_size, seed=1)
        features = tf.compat.v1.data.make_one_shot_iterator(
            input_fn({})).get_next()
        num_sampled = workloads.default_num_sampled(preset)
        if encoder == "nextitnet":
          loss = networks.nextitnet_pretrain(features["itemseq"], config,
                                             softmax=spec.softmax,
                                             num_sampled=num_sampled)["loss"]
        else:
          loss = networks.grec_pretrain(
              features["masked_itemseq"], features["masked_positions"],
              features["masked_labels"], config, softmax=spec.softmax,
              num_sampled=num_sampled)["loss"]
        var_list = None
      else:
        meta = data["finetune"]
        config = workloads.model_config(preset, True).replace(**config_fields)
        input_fn = data_loader.finetune_input_fn_builder(
            meta["paths"]["train"], meta["source_length"], True,
            preset.finetune_batch, is_training=True,
            target_vocab_size=meta["target_vocab_size"], num_negatives=1,
            seed=1)
        features = tf.compat.v1.data.make_one_shot_iterator(
            input_fn({})).get_next()
        loss, var_list = workloads.finetune_loss(
            features["rows"][:, :-1], features["target"],
            features["negatives"][:, 0], config, spec.insertion,
            meta["target_vocab_size"])
      train_op = tf.compat.v1.train.AdamOptimizer(0.001).minimize(
          loss, var_list=var_list)
      self._fetches = [train_op, loss]
      init = tf.compat.v1.global_variables_initializer()
    self._graph.finalize()
    intra, inter = settings.get("threads", (1, 2))
    session_config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=intra,
        inter_op_parallelism_threads=inter, use_per_session_threads=True)
    if settings.get("jit"):
      session_config.graph_options.optimizer_options.global_jit_level = (
          tf.compat.v1.OptimizerOptions.ON_1)
    self._session = tf.compat.v1.Session(graph=self._graph,
                                         config=session_config)
    self._session.run(init)


class ScriptSession(_SessionSteps):
  """The scripts' model_fn (TRAIN) and input_fn, run in a plain session."""

  def __init__(self, estimator_training):
    model_fn, input_fn = estimator_training.model_fn_and_input_fn()
    self._graph = tf.Graph()
    with self._graph.as_default():
      tf.compat.v1.train.get_or_create_global_step()
      features = tf.compat.v1.data.make_one_shot_iterator(
          input_fn({})).get_next()
      spec = model_fn(features, None, tf.estimator.ModeKeys.TRAIN, {})
      self._fetches = [spec.train_op, spec.loss]
      init = tf.compat.v1.global_variables_initializer()
    self._graph.finalize()
    # Its own inter-op pool, of the size the script's config asks for.
    self._session = tf.compat.v1.Session(
        graph=self._graph,
        config=pipeline.own_pools(estimator_training.session_config()))
    self._session.run(init)


def build_variant(name, workload, preset, data, work_dir):
  if name == "feed_dict":
    return feed_dict_baseline.loop_for(workloads.workload(workload), preset,
                                       data)
  if name == "estimator":
    return pipeline.EstimatorTraining(workload, preset, data, work_dir)
  if name == "script_session":
    return ScriptSession(pipeline.EstimatorTraining(workload, preset, data,
                                                    work_dir))
  return RawSession(workload, preset, data, VARIANTS[name][1])


def measure(workload, preset, data, work_dir, names, reps, steps):
  pretraining = workloads.workload(workload).pretraining
  warmup = preset.pretrain_warmup if pretraining else preset.finetune_warmup
  runners = collections.OrderedDict()
  for name in names:
    logging.info("building %s", name)
    runners[name] = build_variant(name, workload, preset, data, work_dir)
    if name != "estimator":
      runners[name].run_steps(warmup)
  records = []
  for rep in range(reps):
    order = names[rep % len(names):] + names[:rep % len(names)]
    for name in order:
      runner = runners[name]
      if name == "estimator":
        window, count = runner.run_window(warmup, steps)
      else:
        gc.collect()  # garbage of earlier graphs: not inside the window
        window = cpu_monitor.CpuWindow().start()
        runner.run_steps(steps)
        window.stop()
        count = steps
      records.append({"variant": name, "rep": rep, "steps": count,
                      "seconds": window.seconds,
                      "other_cores": window.other_cores,
                      "own_cores": window.own_cores})
      logging.info("%s rep %d: %.2f steps/s, other %.2f cores", name, rep,
                   count / window.seconds, window.other_cores or 0)
  for name, runner in runners.items():
    if name != "estimator":
      runner.close()
  return records


def format_table(records, names, baseline="feed_dict"):
  rows = []
  rates = {}
  for name in names:
    mine = [r for r in records if r["variant"] == name]
    rate = float(np.median([r["steps"] / r["seconds"] for r in mine]))
    cpu_ms = [1000 * r["own_cores"] * r["seconds"] / r["steps"]
              for r in mine if r["own_cores"] is not None]
    other = [r["other_cores"] for r in mine if r["other_cores"] is not None]
    rates[name] = rate
    rows.append((name, VARIANTS[name][0], rate,
                 float(np.median(cpu_ms)) if cpu_ms else None,
                 max(other) if other else None))
  lines = ["| variant | what | steps/s | vs %s | CPU ms/step | other CPU "
           "(max cores) |" % baseline, "|---|---|---:|---:|---:|---:|"]
  for name, what, rate, cpu_ms, other in rows:
    ratio = rate / rates[baseline] if baseline in rates else None
    lines.append("| %s | %s | %.2f | %s | %s | %s |" % (
        name, what, rate, "-" if ratio is None else "%.2fx" % ratio,
        "-" if cpu_ms is None else "%.1f" % cpu_ms,
        "-" if other is None else "%.2f" % other))
  return "\n".join(lines)


def main(argv):
  del argv
  tf.compat.v1.disable_eager_execution()
  unknown = [n for n in FLAGS.variants if n not in VARIANTS]
  if unknown:
    raise app.UsageError("unknown variants %s; known: %s" %
                         (unknown, list(VARIANTS)))
  preset = workloads.PRESETS[FLAGS.preset]
  pretraining = workloads.workload(FLAGS.workload).pretraining
  steps = FLAGS.steps or (preset.pretrain_steps[1] if pretraining
                          else preset.finetune_steps[1])
  temporary = FLAGS.work_dir is None
  work_dir = FLAGS.work_dir or tempfile.mkdtemp(prefix="peterrec_ablation_")
  pipeline.pin_global_thread_pools(pipeline.EstimatorTraining(
      FLAGS.workload, preset, None, None).session_config())
  try:
    data = workloads.prepare_data(preset, work_dir)
    records = measure(FLAGS.workload, preset, data, work_dir,
                      list(FLAGS.variants), FLAGS.reps, steps)
  finally:
    if temporary:
      shutil.rmtree(work_dir, ignore_errors=True)
  print("\n%s, preset %s, %d reps of %d steps\n" % (
      FLAGS.workload, FLAGS.preset, FLAGS.reps, steps))
  print(format_table(records, list(FLAGS.variants)))
  if FLAGS.json_output:
    with open(FLAGS.json_output, "w") as f:
      json.dump(records, f, indent=2)


if __name__ == "__main__":
  define_flags()
  app.run(main)
