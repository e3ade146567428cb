"""(b) the Estimator/TFRecord pipeline users run, and (c) its input alone.

(b) builds exactly what the scripts build: `nextitnet_pretrain.model_fn_builder`
with `nextitnet_pretrain.input_fn_builder` and `build_estimator` (plus the
script's ProgressHook), or `peterrec_finetune.model_fn_builder` with
`data_loader.finetune_input_fn_builder` and `make_estimator`, at the
scripts' default settings. Each repetition trains a fresh model directory
(`Estimator.train`), and a hook times a window of steps after warm-up: graph
building, session start-up and the final checkpoint are outside the window.
(c) iterates the same `input_fn`'s dataset in a session with the same
session config and nothing else.
"""
import os
import shutil

import tensorflow as tf

import data_loader
import nextitnet_pretrain
import peterrec_finetune
import training_utils
from benchmarks import cpu_monitor
from benchmarks import workloads


class _WindowHook(tf.estimator.SessionRunHook):
  """Times `timed_runs` session runs after `warmup_runs`, then stops.

  The global step is read (in its own session.run) just before and just
  after the window, so the count of steps is exact even when one run
  advances several steps.
  """

  def __init__(self, warmup_runs, timed_runs):
    self._warmup_runs = warmup_runs
    self._timed_runs = timed_runs
    self.window = cpu_monitor.CpuWindow()
    self.steps = None

  def begin(self):
    self._global_step = tf.compat.v1.train.get_global_step()
    self._runs = 0
    self._start_step = None

  def after_create_session(self, session, coord):
    del coord
    if self._warmup_runs == 0:
      self._start_step = session.run(self._global_step)
      self.window.start()

  def after_run(self, run_context, run_values):
    del run_values
    self._runs += 1
    if self._runs == self._warmup_runs:
      self._start_step = run_context.session.run(self._global_step)
      self.window.start()
    elif self._runs == self._warmup_runs + self._timed_runs:
      self.window.stop()
      self.steps = int(run_context.session.run(self._global_step) -
                       self._start_step)
      run_context.request_stop()


class EstimatorTraining(object):
  """(b) for one workload; `run_window` trains a fresh model directory."""

  def __init__(self, workload, preset, data, work_dir, seed=1):
    self._workload = workload
    self._preset = preset
    self._data = data
    self._work_dir = work_dir
    self._seed = seed
    self._count = 0
    self.batch_size = (preset.pretrain_batch if workload.startswith("pretrain")
                       else preset.finetune_batch)

  def model_fn_and_input_fn(self):
    preset, data = self._preset, self._data
    if self._workload.startswith("pretrain"):
      encoder = self._workload[len("pretrain_"):]
      meta = data["pretrain"]
      config = workloads.model_config(preset, encoder == "nextitnet")
      model_fn = nextitnet_pretrain.model_fn_builder(
          config, "sampled", 0.001,
          num_sampled=workloads.default_num_sampled(preset))
      input_fn = nextitnet_pretrain.input_fn_builder(
          meta["paths"]["train"], meta["seq_length"], self.batch_size, True,
          encoder, config.item_size, seed=self._seed)
      return model_fn, input_fn
    insertion = self._workload[len("finetune_"):]
    meta = data["finetune"]
    config = workloads.model_config(preset, True)
    model_fn = peterrec_finetune.model_fn_builder(
        config, data["backbones"][True], "peterrec", insertion, 1,
        "recommendation", meta["target_vocab_size"], loss="bce",
        learning_rate=0.001)
    input_fn = data_loader.finetune_input_fn_builder(
        meta["paths"]["train"], meta["source_length"], config.causal,
        self.batch_size, is_training=True,
        target_vocab_size=meta["target_vocab_size"], num_negatives=1,
        sampler="uniform", seed=self._seed)
    return model_fn, input_fn

  def _estimator(self, model_fn, model_dir):
    if self._workload.startswith("pretrain"):
      return nextitnet_pretrain.build_estimator(model_fn, model_dir,
                                                seed=self._seed)
    return peterrec_finetune.make_estimator(model_fn, model_dir,
                                            tf_random_seed=self._seed)

  def _script_hooks(self, model_dir):
    """The hooks the script's own `run` adds to `Estimator.train`."""
    if self._workload.startswith("pretrain"):
      return [nextitnet_pretrain.ProgressHook(
          nextitnet_pretrain.TRAIN_LOSS_NAME + ":0", self.batch_size, 100,
          model_dir)]
    return []

  def session_config(self):
    """The session config of the script's Estimator."""
    def unused_model_fn(features, labels, mode, params):
      del features, labels, mode, params
    return self._estimator(unused_model_fn, None).config.session_config

  def input_fn(self):
    return self.model_fn_and_input_fn()[1]

  def run_window(self, warmup_steps, timed_steps):
    """Trains a fresh model; returns (CpuWindow, steps in the window)."""
    self._count += 1
    model_dir = os.path.join(self._work_dir, "b_%s_%d" % (self._workload,
                                                          self._count))
    shutil.rmtree(model_dir, ignore_errors=True)
    model_fn, input_fn = self.model_fn_and_input_fn()
    estimator = self._estimator(model_fn, model_dir)
    hook = _WindowHook(warmup_steps, timed_steps)
    estimator.train(input_fn, hooks=self._script_hooks(model_dir) + [hook],
                    max_steps=10 ** 9)
    shutil.rmtree(model_dir, ignore_errors=True)
    return hook.window, hook.steps


class InputOnly(object):
  """(c): the training input_fn's batches, pulled in a session, no model."""

  def __init__(self, input_fn, session_config=None):
    self._graph = tf.Graph()
    with self._graph.as_default():
      dataset = input_fn({})
      features = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
      # Run IteratorGetNext without copying the batch into Python.
      self._next = tf.group(tf.nest.flatten(features))
    self._graph.finalize()
    if session_config is None:
      session_config = training_utils.session_config()
    self._session = tf.compat.v1.Session(graph=self._graph,
                                         config=session_config)

  def run_steps(self, num_steps):
    for _ in range(num_steps):
      self._session.run(self._next)

  def close(self):
    self._session.close()


class MatmulPeak(object):
  """A 2048 x 2048 float32 matmul, default threads: the machine's ceiling."""

  def __init__(self, size=2048):
    self.size = size
    self._graph = tf.Graph()
    with self._graph.as_default():
      a = tf.compat.v1.get_variable(
          "a", [size, size], initializer=tf.compat.v1.random_normal_initializer())
      b = tf.compat.v1.get_variable(
          "b", [size, size], initializer=tf.compat.v1.random_normal_initializer())
      # Fetch one number so that no 16 MB result is copied out (the sum
      # costs 0.1% of the product).
      self._product = tf.reduce_sum(tf.matmul(a, b))
      init = tf.compat.v1.global_variables_initializer()
    self._graph.finalize()
    self._session = tf.compat.v1.Session(graph=self._graph)
    self._session.run(init)

  def run_steps(self, num_steps):
    for _ in range(num_steps):
      self._session.run(self._product)

  def close(self):
    self._session.close()
