"""(b) the Estimator/TFRecord pipeline users run, and (c) its input alone.

(b) builds exactly what the scripts build: `nextitnet_pretrain.model_fn_builder`
with `nextitnet_pretrain.input_fn_builder` and `training_utils.make_estimator` (plus the
script's training_utils.ProgressHook), or `peterrec_finetune.model_fn_builder` with
`data_loader.finetune_input_fn_builder` and `make_estimator`, at the
scripts' default settings. Each repetition trains a fresh model directory
(`Estimator.train`) in which a hook times windows of steps after warm-up:
graph building, session start-up and the final checkpoint are outside the
windows; the other variants run between them (`run_interleaved`).
(c) iterates the same `input_fn`'s dataset in a session with the same
session config and nothing else.
"""
import gc
import os
import shutil
import tempfile

import tensorflow as tf

import data_loader
import nextitnet_pretrain
import peterrec_finetune
import training_utils
from benchmarks import cpu_monitor
from benchmarks import workloads


def pin_global_thread_pools(session_config):
  """Sizes the process-wide inter-op pool like `session_config`.

  A TF1 session without `use_per_session_threads` runs its ops on a global
  inter-op pool that the FIRST session of the process sizes; the Estimator
  creates such a session. Calling this before any other session gives the
  Estimator the pool its config asks for, as in a process of its own. (The
  intra-op pools are per session when TF_OVERRIDE_GLOBAL_THREADPOOL=1,
  which the benchmark scripts set before importing TensorFlow.)
  """
  with tf.Graph().as_default():
    with tf.compat.v1.Session(config=session_config) as session:
      session.run(tf.constant(0))


def own_pools(session_config=None):
  """`session_config` (default: TF's defaults) with its own inter-op pool."""
  config = tf.compat.v1.ConfigProto()
  if session_config is not None:
    config.CopyFrom(session_config)
  config.use_per_session_threads = True
  return config


class _InterleavedWindowsHook(tf.estimator.SessionRunHook):
  """Times `reps` windows of `timed_runs` runs in one `Estimator.train`.

  After `warmup_runs` runs, and after each window but the last, it calls
  `between(index of the next window)` (the other variants' windows, run in
  this thread while the Estimator waits), then lets `rewarm_runs` untimed
  runs refill the caches before the next window. One long training run, as
  users have it: no session start-up, checkpoint restore or cold caches
  inside or between the windows.
  """

  def __init__(self, warmup_runs, timed_runs, reps, between=None,
               rewarm_runs=3):
    self._warmup_runs = warmup_runs
    self._timed_runs = timed_runs
    self._reps = reps
    self._between = between
    self._rewarm_runs = rewarm_runs
    self.windows = []  # (CpuWindow, steps)

  def begin(self):
    self._global_step = tf.compat.v1.train.get_global_step()
    self._runs = 0
    self._state = "warmup"
    self._until = self._warmup_runs
    self._window = None
    self._start_step = None

  def after_run(self, run_context, run_values):
    del run_values
    self._runs += 1
    if self._runs < self._until:
      return
    session = run_context.session
    if self._state == "timed":
      self._window.stop()
      steps = int(session.run(self._global_step) - self._start_step)
      self.windows.append((self._window, steps))
      if len(self.windows) == self._reps:
        run_context.request_stop()
        return
    if self._state in ("warmup", "timed"):
      if self._between is not None:
        self._between(len(self.windows))
      self._state, self._until = "rewarm", self._runs + self._rewarm_runs
      if self._rewarm_runs > 0:
        return
    # Open the next window.
    self._start_step = session.run(self._global_step)
    gc.collect()  # not in the middle of the window
    self._state, self._until = "timed", self._runs + self._timed_runs
    self._window = cpu_monitor.CpuWindow().start()


class EstimatorTraining(object):
  """(b) for one workload; `run_window` trains a fresh model directory."""

  def __init__(self, workload, preset, data, work_dir, seed=1):
    self._workload = workload
    self._spec = workloads.workload(workload)
    self._preset = preset
    self._data = data
    self._work_dir = work_dir
    self._seed = seed
    self._count = 0
    self.batch_size = (preset.pretrain_batch if self._spec.pretraining
                       else preset.finetune_batch)

  def model_fn_and_input_fn(self):
    preset, data = self._preset, self._data
    spec = self._spec
    if spec.pretraining:
      meta = data["pretrain"]
      config = workloads.model_config(preset, spec.causal)
      model_fn = nextitnet_pretrain.model_fn_builder(
          config, spec.softmax, 0.001,
          num_sampled=workloads.default_num_sampled(preset))
      input_fn = nextitnet_pretrain.input_fn_builder(
          meta["paths"]["train"], meta["seq_length"], self.batch_size, True,
          spec.encoder, config.item_size, seed=self._seed)
      return model_fn, input_fn
    insertion = spec.insertion
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
    return training_utils.make_estimator(
        model_fn, model_dir, tf_random_seed=self._seed)

  def _script_hooks(self, model_dir):
    """The hooks the script's own `run` adds to `Estimator.train`."""
    if self._spec.pretraining:
      return [training_utils.ProgressHook(
          nextitnet_pretrain.TRAIN_LOSS_NAME + ":0", self.batch_size, 100,
          total_steps=10 ** 9, output_dir=model_dir)]
    return []

  def session_config(self):
    """The session config of the script's Estimator."""
    def unused_model_fn(features, labels, mode, params):
      del features, labels, mode, params
    model_dir = tempfile.mkdtemp(prefix="peterrec_bench_config_")
    try:
      return self._estimator(unused_model_fn,
                             model_dir).config.session_config
    finally:
      shutil.rmtree(model_dir, ignore_errors=True)

  def input_fn(self):
    return self.model_fn_and_input_fn()[1]

  def run_interleaved(self, warmup_steps, timed_steps, reps, between):
    """One `Estimator.train` with `reps` timed windows (see the hook).

    Returns:
      list of (CpuWindow, steps in the window).
    """
    self._count += 1
    model_dir = os.path.join(self._work_dir, "b_%s_%d" % (self._workload,
                                                          self._count))
    shutil.rmtree(model_dir, ignore_errors=True)
    model_fn, input_fn = self.model_fn_and_input_fn()
    estimator = self._estimator(model_fn, model_dir)
    hook = _InterleavedWindowsHook(warmup_steps, timed_steps, reps, between)
    estimator.train(input_fn, hooks=self._script_hooks(model_dir) + [hook],
                    max_steps=10 ** 9)
    shutil.rmtree(model_dir, ignore_errors=True)
    return hook.windows

  def run_window(self, warmup_steps, timed_steps):
    """Trains a fresh model; returns (CpuWindow, steps in the window)."""
    return self.run_interleaved(warmup_steps, timed_steps, 1, None)[0]


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
    self._session = tf.compat.v1.Session(graph=self._graph,
                                         config=own_pools())
    self._session.run(init)

  def run_steps(self, num_steps):
    for _ in range(num_steps):
      self._session.run(self._product)

  def close(self):
    self._session.close()
