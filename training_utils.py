"""Helpers shared by the training scripts: run configuration, reports, files.

Nothing here builds model graphs (that is `ops/`) or reads flags (only the
scripts' `main` does).
"""
import json
import os
import tempfile
import time

from absl import logging
import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

import data_loader


def num_train_steps(num_epochs, num_examples, batch_size):
  """Steps of `num_epochs` passes over `num_examples` (at least 1)."""
  return max(1, int(num_epochs * num_examples / batch_size))


def set_process_threads(intra_op_threads, inter_op_threads):
  """Sizes TensorFlow's process-wide thread pools; call before any graph.

  Under TensorFlow 2 the sessions of tf.compat.v1 run on the process-wide
  pools, which are created at their default size (one thread per core)
  the first time the eager context is used, and `Estimator.train` uses it
  (a cond_v2) before its session exists. So a ConfigProto's thread counts
  alone are ignored; setting the pools first makes them hold.

  Returns:
    True when set; False when the pools already existed (a second run in
    the same process): a warning says so if their sizes differ.
  """
  threading = tf.config.threading
  try:
    threading.set_intra_op_parallelism_threads(intra_op_threads)
    threading.set_inter_op_parallelism_threads(inter_op_threads)
    return True
  except RuntimeError:
    current = (threading.get_intra_op_parallelism_threads(),
               threading.get_inter_op_parallelism_threads())
    if current != (intra_op_threads, inter_op_threads):
      logging.warning("TensorFlow's thread pools already exist in this "
                      "process with intra/inter-op sizes %s, not %s", current,
                      (intra_op_threads, inter_op_threads))
    return False


def make_estimator(model_fn, model_dir, tf_random_seed=None,
                   save_checkpoints_steps=1000, save_summary_steps=100,
                   keep_checkpoint_max=5, intra_op_threads=1,
                   inter_op_threads=2, save_graph_def=False):
  """An Estimator with our session config and cadences (nothing per step).

  `save_graph_def=True` writes graph.pbtxt and the checkpoints' .meta files
  (the scripts rebuild the graph from code; the text graph alone costs
  about 2 s of start-up at the demo size).
  """
  run_config = tf.estimator.RunConfig(
      model_dir=model_dir, tf_random_seed=tf_random_seed,
      checkpoint_save_graph_def=save_graph_def,
      save_checkpoints_steps=save_checkpoints_steps,
      save_summary_steps=save_summary_steps,
      log_step_count_steps=None,  # ProgressHook reports
      keep_checkpoint_max=keep_checkpoint_max,
      session_config=session_config(intra_op_threads, inter_op_threads))
  return tf.estimator.Estimator(model_fn=model_fn, config=run_config,
                                params={})


def session_config(intra_op_threads=1, inter_op_threads=2):
  """ConfigProto with the thread settings measured best on 2 cores.

  intra 1 / inter 2 was fastest for these small steps (benchmarks/README.md).
  0 means "let TensorFlow decide".
  """
  config = tf.compat.v1.ConfigProto(
      intra_op_parallelism_threads=intra_op_threads,
      inter_op_parallelism_threads=inter_op_threads,
      allow_soft_placement=True)
  # One pass of Grappler's optimizers instead of two: the first step of each
  # new set of fetches (training, +summaries, validation) takes 0.5-0.7 s
  # less at the demo size, and the step is as fast (benchmarks/README.md).
  config.graph_options.rewrite_options.meta_optimizer_iterations = (
      rewriter_config_pb2.RewriterConfig.ONE)
  filters = distributed_device_filters()
  if filters:  # Under TF_CONFIG only (see distributed_device_filters).
    config.device_filters.extend(filters)
  return config


write_text_atomic = data_loader.write_text_atomic


def write_json_atomic(path, values):
  """Writes `values` as indented JSON through a temporary file and a rename."""
  write_text_atomic(path, json.dumps(to_builtin(values), indent=2,
                                     sort_keys=True) + "\n")


def to_builtin(value):
  """numpy scalars and arrays inside dicts/lists to plain Python values."""
  if isinstance(value, dict):
    return {str(k): to_builtin(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_builtin(v) for v in value]
  if hasattr(value, "tolist"):
    return value.tolist()
  return value


def format_metrics_table(metrics, title=None, digits=4, reference=None,
                         reference_name="reference"):
  """A small markdown table of metric name -> value, for the final report.

  Args:
    metrics: dict {name: number}.
    title: optional first line.
    reference: optional dict {name: number}, shown in a second column (a
      user-independent yardstick; "-" where it has no value).
    reference_name: the second column's header.

  Returns:
    str.
  """
  header = ["metric", "value"] + ([reference_name] if reference else [])
  rows = [[str(name), _format_number(value, digits)] +
          ([_format_number(reference[name], digits) if name in reference
            else "-"] if reference else [])
          for name, value in sorted(metrics.items())]
  widths = [max(len(r[i]) for r in [header] + rows)
            for i in range(len(header))]
  lines = [] if title is None else [title]
  lines.append("| " + " | ".join(
      [header[0].ljust(widths[0])] +
      [h.rjust(w) for h, w in zip(header[1:], widths[1:])]) + " |")
  lines.append("|" + "|".join(["-" * (widths[0] + 2)] +
                              ["-" * (w + 1) + ":" for w in widths[1:]]) + "|")
  for row in rows:
    lines.append("| " + " | ".join(
        [row[0].ljust(widths[0])] +
        [v.rjust(w) for v, w in zip(row[1:], widths[1:])]) + " |")
  return "\n".join(lines)


def _format_number(value, digits):
  if hasattr(value, "item"):
    value = value.item()
  if isinstance(value, float):
    return "%.*f" % (digits, value)
  return str(value)


# ---------------------------------------------------------------------------
# Reliability: writable directories, corrupt input, determinism, TF_CONFIG
# ---------------------------------------------------------------------------


class RunError(ValueError):
  """A run cannot start or continue; the message names the file or path."""


def check_positive(values):
  """RunError naming the first flag in {flag name: value} that is not > 0.

  None (not given: a default is derived) passes.
  """
  for name, value in values.items():
    if value is not None and not value > 0:
      raise RunError("--%s must be positive, got %s" % (name, value))


def check_writable_dir(path, flag_name="--output_dir"):
  """Fails fast, before anything is built, when `path` cannot be written.

  Does not create `path`: checks that `path` (or, when it does not exist
  yet, its nearest existing parent) is a directory in which a file can be
  created, with a probe file that is removed again.

  Raises:
    RunError naming `path` (a parent that is a regular file, a read-only
    file system, no permission).
  """
  if not path:
    raise RunError("%s is empty" % flag_name)
  if "://" in path:  # gs://, hdfs://: the first write will tell.
    return
  existing = os.path.abspath(path)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  try:
    if not os.path.isdir(existing):
      raise OSError("%s is not a directory" % existing)
    handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=existing)
    os.close(handle)
    os.remove(probe)
  except OSError as e:
    raise RunError("%s %s is not a writable directory: %s" %
                   (flag_name, path, e))


def find_corrupt_tfrecords(paths):
  """Reads every record of each file; returns [(path, good records, error)].

  A full CRC pass (TFRecordDataset checks the length and data CRCs): used
  only after a DataLossError, to name the file TensorFlow's message omits.
  """
  bad = []
  for path in data_loader.resolve_input_files(paths):
    count = 0
    try:
      for _ in tf.data.TFRecordDataset(path):
        count += 1
    except tf.errors.OpError as e:
      message = e.message.split("}}")[-1].strip()
      bad.append((path, count, message))
  return bad


class data_loss_guard(object):  # pylint: disable=invalid-name
  """Turns a DataLossError of the input pipeline into one naming the file.

  tf.data reports a truncated or corrupted TFRecord as `DataLossError:
  truncated record at 11484` without the file. Around `estimator.train` /
  `evaluate`, this scans `input_files` (only when the error happened, so a
  healthy run pays nothing) and raises RunError naming the bad file(s).

    with training_utils.data_loss_guard([train_file, test_file]):
      estimator.train(...)
  """

  def __init__(self, input_files):
    self._files = ([input_files] if isinstance(input_files, str)
                   else list(input_files))

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, traceback):
    if exc_type is None or not issubclass(exc_type, tf.errors.DataLossError):
      return False
    bad = find_corrupt_tfrecords(self._files)
    if bad:
      detail = "; ".join("%s (%d good records, then: %s)" % b for b in bad)
    else:
      detail = "one of %s" % ", ".join(self._files)
    raise RunError("corrupt or truncated TFRecord file: %s. Re-create it "
                   "with tfrecord_tools.convert_csv. (TensorFlow: %s)" %
                   (detail, exc.message.split("}}")[-1].strip()))


def enable_determinism():
  """Deterministic kernels for every graph of this process.

  `tf.config.experimental.enable_op_determinism()`: ops pick deterministic
  implementations (or raise when none exists) and tf.data keeps element
  order. Seeds are the caller's job: the Estimator's `tf_random_seed` (the
  graph-level seed, hence every initializer and sampler op seed) and the
  input_fns' `seed` (shuffle, negatives, masks).
  """
  tf.config.experimental.enable_op_determinism()


def tf_config_task(environ=None):
  """(task type, task index, cluster dict) from TF_CONFIG, or None.

  None when TF_CONFIG is unset or has no cluster (a single-process run).
  """
  environ = os.environ if environ is None else environ
  raw = environ.get("TF_CONFIG")
  if not raw:
    return None
  config = json.loads(raw)
  cluster = config.get("cluster") or {}
  task = config.get("task") or {}
  if not cluster:
    return None
  return task.get("type"), int(task.get("index", 0)), cluster


def training_shard(cluster_task):
  """(index, count) of this trainer among the chief and workers, or None.

  None outside a cluster and for the ps and evaluator tasks.
  """
  if cluster_task is None or cluster_task[0] not in ("chief", "worker"):
    return None
  task_type, index, cluster = cluster_task
  num_chiefs = len(cluster.get("chief", []))
  count = num_chiefs + len(cluster.get("worker", []))
  return (index if task_type == "chief" else num_chiefs + index, count)


def distributed_device_filters(environ=None):
  """The device filters the Estimator sets itself when it owns the config.

  Estimator only adds them when `session_config` is None; our runs pass one
  (thread counts), so we add them: a chief/worker talks to the ps tasks and
  itself, not to the other workers (which may not have started yet).
  """
  task = tf_config_task(environ)
  if task is None:
    return None
  task_type, index, _ = task
  if task_type == "chief":
    return ["/job:ps", "/job:chief"]
  if task_type == "master":
    return ["/job:ps", "/job:master"]
  if task_type == "worker":
    return ["/job:ps", "/job:worker/task:%d" % index]
  if task_type == "ps":
    return ["/job:ps", "/job:worker", "/job:chief", "/job:master"]
  return None


# tensorflow/python/training/training_util.py: the collection of the step
# tensor that the Estimator's hooks fetch.
GLOBAL_STEP_READ_KEY = "global_step_read_op_cache"


def minimize_and_count_step(optimizer, loss, var_list=None):
  """`optimizer.minimize(loss)`, then `global_step += 1`: the train op.

  The same update as `minimize(loss, global_step=...)`, except that the
  increment also waits for the step value the Estimator's hooks fetch in the
  same `session.run` (summaries, step logging, checkpoint cadence). Without
  that order the hooks read the step before or after the increment at
  random, and two identical runs label their summaries with different steps.
  """
  global_step = tf.compat.v1.train.get_or_create_global_step()
  update = optimizer.minimize(loss, var_list=var_list)
  step_reads = tf.compat.v1.get_collection(GLOBAL_STEP_READ_KEY)
  with tf.control_dependencies([update] + step_reads):
    return tf.compat.v1.assign_add(global_step, 1).op


class WaitForWorkersHook(tf.estimator.SessionRunHook):
  """Makes the chief wait, before its first step, for a worker's first step.

  In asynchronous parameter-server training the Estimator starts worker i
  5 * (i + 1) s after the chief, so on a short run the chief can reach
  `max_steps` alone. This hook polls the shared `global_step` after the
  chief's session is created (variables initialized) and returns once another
  task has moved it, or after `timeout_secs` with a warning.
  """

  def __init__(self, timeout_secs, poll_secs=0.1):
    self._timeout_secs = float(timeout_secs)
    self._poll_secs = float(poll_secs)

  def begin(self):
    self._global_step = tf.compat.v1.train.get_global_step()

  def after_create_session(self, session, coord):
    del coord
    start_step = int(session.run(self._global_step))
    started = time.time()
    while time.time() - started < self._timeout_secs:
      if int(session.run(self._global_step)) > start_step:
        logging.info("a worker has started training (after %.1f s); the "
                     "chief starts too", time.time() - started)
        return
      time.sleep(self._poll_secs)
    logging.warning("no worker stepped within %.0f s; the chief trains alone",
                    self._timeout_secs)


def staging_dir(final_dir):
  """A fresh empty sibling of `final_dir` to write into before renaming."""
  staging = "%s.tmp-%d" % (final_dir, os.getpid())
  if tf.io.gfile.exists(staging):
    tf.io.gfile.rmtree(staging)
  tf.io.gfile.makedirs(staging)
  return staging


def replace_dir(staging, final_dir):
  """Moves the complete `staging` directory to `final_dir` (renames only).

  The previous `final_dir` is renamed aside first and removed after, so at
  every moment `final_dir` is either the old complete one, absent, or the
  new complete one; never partly written. Checkpoints in it use relative
  paths (save_relative_paths), so they survive the move.
  """
  old = None
  if tf.io.gfile.exists(final_dir):
    old = "%s.old-%d" % (final_dir, os.getpid())
    _rename_dir(final_dir, old)
  _rename_dir(staging, final_dir)
  if old is not None:
    tf.io.gfile.rmtree(old)


def _rename_dir(source, target):
  """Renames a directory; file by file where the file system (an object
  store, ram://) has no directory rename."""
  if not data_loader.is_url(source):
    tf.io.gfile.rename(source, target, overwrite=True)
    return
  for directory, _, files in list(tf.io.gfile.walk(source)):
    destination = os.path.join(target, directory[len(source):].lstrip("/"))
    tf.io.gfile.makedirs(destination)
    for name in files:
      tf.io.gfile.rename(os.path.join(directory, name),
                         os.path.join(destination, name), overwrite=True)
  tf.io.gfile.rmtree(source)


# ---------------------------------------------------------------------------
# Validation during training: the best checkpoint and early stopping
# ---------------------------------------------------------------------------

BEST_STATE_FILE = "best.json"
BEST_CHECKPOINT_PREFIX = "model.ckpt"


class BestCheckpointRecord(object):
  """`best_dir/best.json`: every validation, the best one, the stale count.

  Shared by the in-process BestCheckpointHook and, under TF_CONFIG, the
  evaluator's BestCheckpointExporter, so both write the same file, which
  `finetuning.read_selection` reads back (and a resumed run continues).
  Higher is better; ties go to the later step (equal validation, more
  training).
  """

  def __init__(self, best_dir, metric, patience=0, log=logging.info,
               extra=None):
    self._best_dir = best_dir
    self._metric = metric
    self._patience = int(patience)
    self._log = log
    self._extra = dict(extra or {})
    self._state_path = os.path.join(best_dir, BEST_STATE_FILE)
    state = {"history": [], "best": None, "evaluations_without_improvement": 0}
    if tf.io.gfile.exists(self._state_path):
      with tf.io.gfile.GFile(self._state_path) as reader:
        state.update(json.load(reader))
    self.history = state["history"]
    self.best = state["best"]
    self._stale = state["evaluations_without_improvement"]

  def seen(self, step):
    """True when `step` was the last one recorded (the last step, a resume)."""
    return bool(self.history) and self.history[-1]["step"] == step

  def add(self, step, results, keep):
    """Records the validation `results` of `step`.

    `keep(step)` saves the checkpoint when it is the best so far and returns
    its basename in `best_dir` (None: it could not be kept; the best stays).

    Returns:
      True when `patience` evaluations in a row are below the best.
    """
    if self._metric not in results:
      raise ValueError("validation metric %r is not among %s" %
                       (self._metric, sorted(results)))
    metrics = {k: float(v) for k, v in results.items()
               if k not in ("global_step", "loss", "num_examples")}
    self.history.append({"step": step, "metrics": metrics,
                         "loss": float(results.get("loss", float("nan")))})
    value = metrics[self._metric]
    stop = False
    kept = None
    if self.best is None or value >= self.best["metrics"][self._metric]:
      tf.io.gfile.makedirs(self._best_dir)
      kept = keep(step)
    if kept is not None:
      self.best = {"step": step, "metrics": metrics, "checkpoint": kept}
      self._stale = 0
      mark = "best so far"
    else:
      self._stale += 1
      mark = ("best %.4f at step %d" % (self.best["metrics"][self._metric],
                                        self.best["step"])
              if self.best else "no checkpoint kept yet")
      if self._patience and self._stale >= self._patience:
        stop = True
        mark += "; %d evaluations without improvement: stopping" % self._stale
    self._log("validation at step %d: %s %.4f (%s)" % (step, self._metric,
                                                       value, mark))
    write_json_atomic(self._state_path, dict(self._extra, **{
        "metric": self._metric, "history": self.history, "best": self.best,
        "evaluations_without_improvement": self._stale}))
    return stop


class BestCheckpointHook(tf.estimator.experimental.InMemoryEvaluatorHook):
  """Validates in the training session, keeps the best checkpoint, stops early.

  TensorFlow's `InMemoryEvaluatorHook` evaluates `input_fn` every
  `every_n_steps` training steps (before the first too when
  `validate_at_start`, and after the last) in a separate evaluation graph that receives the training variables'
  current values, with no checkpoint round trip; its summaries go to
  `model_dir/eval_<name>/` (TensorBoard's validation curves). On top of it
  this hook (through BestCheckpointRecord):

  * saves the training variables the evaluation graph uses (the model,
    without optimizer slots) to `best_dir/model.ckpt-<step>` whenever
    `metric` reaches or passes the best value so far (higher is better;
    ties go to the later step), keeping only the best;
  * records every evaluation and the best one in `best_dir/best.json`, read
    back when a run resumes;
  * requests a stop after `patience` evaluations in a row below the best
    (0 = never).

  `history` and `best` are available after training;
  `peterrec_finetune.selected_checkpoint` reads the best one back.
  """

  def __init__(self, estimator, input_fn, every_n_steps, metric, best_dir,
               patience=0, name="validation", log=logging.info,
               validate_at_start=True):
    super(BestCheckpointHook, self).__init__(
        estimator, input_fn, name=name, every_n_iter=every_n_steps)
    self._validate_at_start = validate_at_start
    self._starting = False
    self._best_dir = best_dir
    self._record = BestCheckpointRecord(best_dir, metric, patience, log)
    self._stop_requested = False

  @property
  def history(self):
    return self._record.history

  @property
  def best(self):
    return self._record.best

  def begin(self):
    super(BestCheckpointHook, self).begin()
    with self._graph.as_default():
      needed = {v.op.name for v in tf.compat.v1.global_variables()}
    saved = [v for v in tf.compat.v1.global_variables()
             if v.op.name in needed]
    self._saver = tf.compat.v1.train.Saver(saved, max_to_keep=1,
                                           save_relative_paths=True)
    self._global_step = tf.compat.v1.train.get_global_step()

  def after_create_session(self, session, coord):
    self._starting = True  # the parent validates here, before training
    try:
      super(BestCheckpointHook, self).after_create_session(session, coord)
    finally:
      self._starting = False

  def _evaluate(self, train_session):
    self._timer.update_last_triggered_step(self._iter_count)
    if self._starting and not self._validate_at_start:
      return
    step = int(train_session.run(self._global_step))
    if self._record.seen(step):
      return
    results = self._run_evaluation(train_session)

    def keep(step):
      return os.path.basename(self._saver.save(
          train_session, os.path.join(self._best_dir, BEST_CHECKPOINT_PREFIX),
          global_step=step, write_meta_graph=False))

    if self._record.add(step, results, keep):
      self._stop_requested = True

  def _run_evaluation(self, train_session):
    """InMemoryEvaluatorHook._evaluate, returning the results."""
    values = train_session.run(self._var_name_to_train_var)
    feed = {self._var_name_to_placeholder[name]: value
            for name, value in values.items()}

    def feed_variables(scaffold, session):
      del scaffold
      session.run(self._var_feed_op, feed_dict=feed)

    scaffold = tf.compat.v1.train.Scaffold(init_fn=feed_variables,
                                           copy_from_scaffold=self._scaffold)
    with self._graph.as_default():
      return self._estimator._evaluate_run(  # pylint: disable=protected-access
          checkpoint_path=None, scaffold=scaffold, update_op=self._update_op,
          eval_dict=self._eval_dict, all_hooks=self._all_hooks,
          output_dir=self._eval_dir)

  def after_run(self, run_context, run_values):
    super(BestCheckpointHook, self).after_run(run_context, run_values)
    if self._stop_requested:
      run_context.request_stop()


class BestCheckpointExporter(tf.estimator.Exporter):
  """BestCheckpointHook's counterpart on the evaluator of a cluster.

  Under TF_CONFIG, `train_and_evaluate`'s evaluator evaluates each new
  checkpoint of the chief and then calls the EvalSpec's exporters with it.
  This one records the validation in `best_dir/best.json` (the same file,
  through BestCheckpointRecord) and, when the checkpoint is the best so far,
  copies it to `best_dir/` (every file of the prefix: model, Adam slots,
  global_step), keeping only the best. It never stops training: the trainers
  of a cluster run to max_steps (a checkpoint the chief deleted before it
  could be copied, --keep_checkpoint_max, is logged and not kept).
  """

  def __init__(self, metric, best_dir, log=logging.info):
    self._best_dir = best_dir
    self._log = log
    self._record = BestCheckpointRecord(
        best_dir, metric, patience=0, log=log, extra={
            "validated": "checkpoints the evaluator read (TF_CONFIG); no "
                         "early stopping"})

  @property
  def name(self):
    return "best_checkpoint"

  def export(self, estimator, export_path, checkpoint_path, eval_result,
             is_the_final_export):
    del estimator, export_path, is_the_final_export
    step = int(eval_result["global_step"])
    if self._record.seen(step):
      return None

    def keep(step):
      del step
      return self._copy(checkpoint_path)

    self._record.add(step, eval_result, keep)
    return self._best_dir

  def _copy(self, checkpoint_path):
    """Copies the checkpoint into best_dir; drops the previous best there."""
    name = os.path.basename(checkpoint_path)
    previous = self._record.best and self._record.best["checkpoint"]
    try:
      files = tf.io.gfile.glob(checkpoint_path + ".*")
      if not any(f.endswith(".index") for f in files):
        raise tf.errors.NotFoundError(None, None, checkpoint_path + ".index")
      for path in files:
        target = os.path.join(self._best_dir, os.path.basename(path))
        temporary = data_loader.temporary_name(target)
        tf.io.gfile.copy(path, temporary, overwrite=True)
        tf.io.gfile.rename(temporary, target, overwrite=True)
    except tf.errors.NotFoundError:
      logging.warning("checkpoint %s was deleted before the evaluator could "
                      "keep it (raise --keep_checkpoint_max)", checkpoint_path)
      return None
    tf.compat.v1.train.update_checkpoint_state(
        self._best_dir, name, all_model_checkpoint_paths=[name])
    if previous and previous != name:
      for path in tf.io.gfile.glob(os.path.join(self._best_dir,
                                                previous + ".*")):
        tf.io.gfile.remove(path)
    return name


# ---------------------------------------------------------------------------
# A parameter-server cluster (TF_CONFIG)
# ---------------------------------------------------------------------------


def check_cluster_run(cluster_task, do_train, do_eval):
  """Under TF_CONFIG a run is train_and_evaluate: both must be asked for.

  Raises:
    RunError naming the task.
  """
  if cluster_task is not None and not (do_train and do_eval):
    raise RunError(
        "under TF_CONFIG (%s task %d) training and evaluation run through "
        "train_and_evaluate: --do_train and --do_eval must be true (unset "
        "TF_CONFIG to evaluate, predict or export in one process)" %
        cluster_task[:2])


def chief_hooks(cluster_task, wait_for_workers_secs):
  """[WaitForWorkersHook] on the chief of a cluster with workers, else []."""
  if (cluster_task is None or cluster_task[0] != "chief" or
      not cluster_task[2].get("worker") or not wait_for_workers_secs):
    return []
  return [WaitForWorkersHook(wait_for_workers_secs)]


def train_and_evaluate(estimator, train_input_fn, max_steps, hooks,
                       eval_input_fn, throttle_secs, cluster_task=None,
                       chief_waits_secs=0, eval_name=None, exporters=()):
  """`tf.estimator.train_and_evaluate` as both scripts run it.

  One process: trains, evaluating new checkpoints at most every
  `throttle_secs` (and the last one). Under TF_CONFIG: this task's role,
  the chief waiting up to `chief_waits_secs` for a worker (`chief_hooks`).

  Returns:
    the last evaluation result, or None (a task that does not evaluate).
  """
  train_spec = tf.estimator.TrainSpec(
      train_input_fn, max_steps=max_steps,
      hooks=list(hooks) + chief_hooks(cluster_task, chief_waits_secs))
  eval_spec = tf.estimator.EvalSpec(
      eval_input_fn, steps=None, name=eval_name, exporters=list(exporters),
      throttle_secs=throttle_secs, start_delay_secs=0)
  result = tf.estimator.train_and_evaluate(estimator, train_spec, eval_spec)
  return (result or (None, None))[0]


# ---------------------------------------------------------------------------
# Progress and logs
# ---------------------------------------------------------------------------


def format_duration(seconds):
  """7 -> "0:07", 3725 -> "1:02:05"."""
  seconds = int(round(max(seconds, 0)))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return "%d:%02d:%02d" % (hours, minutes, seconds)
  return "%d:%02d" % (minutes, seconds)


def progress_line(what, done, total, unit, elapsed, rate_unit_count=None):
  """'evaluating: 12/40 batches (30%), 950 examples/s, elapsed 0:05, ETA 0:12'.

  `rate_unit_count`: (count, name) the rate is given in, default
  (done, unit).
  """
  count, name = rate_unit_count or (done, unit)
  rate = done / max(elapsed, 1e-9)
  return "%s: %d/%d %s (%d%%), %.0f %s/s, elapsed %s, ETA %s" % (
      what, done, total, unit, 100 * done // max(total, 1),
      count / max(elapsed, 1e-9), name, format_duration(elapsed),
      format_duration(max(total - done, 0) / max(rate, 1e-9)))


class EvaluationProgressHook(tf.estimator.SessionRunHook):
  """Logs done/total batches, examples/s, elapsed and ETA of an evaluation.

  At most every `every_secs` seconds, so an evaluation shorter than that
  prints nothing; one closing line when it printed any.
  """

  def __init__(self, what, num_examples, batch_size, every_secs=10.0,
               log=logging.info):
    self._what = what
    self._batch_size = batch_size
    self._num_examples = num_examples
    self._total = max(1, -(-num_examples // batch_size))
    self._every_secs = every_secs
    self._log = log

  def after_create_session(self, session, coord):
    del session, coord
    self._done = self._reported = 0
    self._printed = False
    self._start = self._last = time.time()

  def after_run(self, run_context, run_values):
    del run_context, run_values
    self._done += 1
    now = time.time()
    if now - self._last >= self._every_secs:
      self._last = now
      self._printed = True
      self._report(now)

  def end(self, session):
    del session
    if self._printed and self._reported != self._done:
      self._report(time.time())

  def _report(self, now):
    self._reported = self._done
    examples = min(self._done * self._batch_size, self._num_examples)
    self._log(progress_line(self._what, self._done, self._total, "batches",
                            now - self._start, (examples, "examples")))


class ProgressHook(tf.estimator.SessionRunHook):
  """Logs step/total, loss, speed, elapsed time and ETA every N steps.

  Fetches the loss only on logging steps and counts steps locally, so it
  adds nothing to the other steps. Also writes `global_step/sec` and
  `examples/sec` to TensorBoard (the Estimator's own step counter and loss
  logger are off: one line per report, not three).
  """

  def __init__(self, loss_name, batch_size, every_n_steps, total_steps,
               output_dir=None, log=logging.info):
    self._loss_name = loss_name
    self._batch_size = batch_size
    self._every_n_steps = max(1, int(every_n_steps))
    self._total_steps = int(total_steps)
    self._output_dir = output_dir
    self._log = log

  def begin(self):
    self._global_step = tf.compat.v1.train.get_global_step()
    self._loss = tf.compat.v1.get_default_graph().get_tensor_by_name(
        self._loss_name)
    self._writer = (tf.compat.v1.summary.FileWriterCache.get(self._output_dir)
                    if self._output_dir else None)

  def after_create_session(self, session, coord):
    del coord
    self._step = int(session.run(self._global_step))
    self._first_step = self._step
    self._last_step = self._step
    self._start_time = self._last_time = time.time()

  def before_run(self, run_context):
    del run_context
    next_step = self._step + 1
    if next_step % self._every_n_steps == 0 or next_step == self._total_steps:
      return tf.estimator.SessionRunArgs(self._loss)
    return None

  def after_run(self, run_context, run_values):
    del run_context
    self._step += 1
    if run_values.results is None:
      return
    now = time.time()
    steps_per_sec = (self._step - self._last_step) / max(
        now - self._last_time, 1e-9)
    elapsed = now - self._start_time
    rate = (self._step - self._first_step) / max(elapsed, 1e-9)
    left = max(self._total_steps - self._step, 0)
    self._log("step %d/%d (%d%%): loss %.4f, %.1f steps/s, %.0f examples/s, "
              "elapsed %s, ETA %s" % (
                  self._step, self._total_steps,
                  100 * self._step // max(self._total_steps, 1),
                  run_values.results, steps_per_sec,
                  steps_per_sec * self._batch_size, format_duration(elapsed),
                  format_duration(left / max(rate, 1e-9))))
    if self._writer is not None:
      self._writer.add_summary(tf.compat.v1.Summary(value=[
          tf.compat.v1.Summary.Value(tag="global_step/sec",
                                     simple_value=steps_per_sec),
          tf.compat.v1.Summary.Value(tag="examples/sec",
                                     simple_value=steps_per_sec *
                                     self._batch_size)]), self._step)
    self._last_step, self._last_time = self._step, now


def quiet_tensorflow():
  """The default log of the scripts: each fact once, and what a person reads.

  TensorFlow's deprecation notices off; TensorFlow's own INFO lines (graph
  finalized, checkpoint listeners, ...) only with --verbosity=1 or more,
  which also lists the variables; TensorFlow's lines printed once (by its
  own handler, not again through absl).
  """
  from tensorflow.python.util import deprecation  # pylint: disable=g-import-not-at-top
  deprecation._PRINT_DEPRECATION_WARNINGS = False  # pylint: disable=protected-access
  tf.get_logger().propagate = False
  tf.compat.v1.logging.set_verbosity(
      tf.compat.v1.logging.INFO if logging.get_verbosity() >= logging.DEBUG
      else tf.compat.v1.logging.WARN)
