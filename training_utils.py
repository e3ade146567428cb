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


def session_config(intra_op_threads=1, inter_op_threads=2):
  """ConfigProto with the thread settings measured best on 2 cores.

  PERF_NOTES.md: intra 1 / inter 2 was fastest for these small steps.
  0 means "let TensorFlow decide".
  """
  config = tf.compat.v1.ConfigProto(
      intra_op_parallelism_threads=intra_op_threads,
      inter_op_parallelism_threads=inter_op_threads,
      allow_soft_placement=True)
  filters = distributed_device_filters()
  if filters:  # Under TF_CONFIG only (see distributed_device_filters).
    config.device_filters.extend(filters)
  return config


def write_text_atomic(path, text):
  """Writes `text` to `path` through a temporary file and a rename."""
  directory = os.path.dirname(os.path.abspath(path))
  tf.io.gfile.makedirs(directory)
  handle, temporary = tempfile.mkstemp(prefix=".tmp-", dir=directory)
  try:
    with os.fdopen(handle, "w") as writer:
      writer.write(text)
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def write_json_atomic(path, values):
  """Writes `values` as indented JSON through a temporary file and a rename."""
  write_text_atomic(path, json.dumps(_to_builtin(values), indent=2,
                                     sort_keys=True) + "\n")


def _to_builtin(value):
  """numpy scalars and arrays inside dicts/lists to plain Python values."""
  if isinstance(value, dict):
    return {str(k): _to_builtin(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_builtin(v) for v in value]
  if hasattr(value, "tolist"):
    return value.tolist()
  return value


def format_metrics_table(metrics, title=None, digits=4):
  """A small markdown table of metric name -> value, for the final report.

  Args:
    metrics: dict {name: number}.
    title: optional first line.

  Returns:
    str.
  """
  rows = [(str(name), _format_number(value, digits))
          for name, value in sorted(metrics.items())]
  width = max([len("metric")] + [len(name) for name, _ in rows])
  value_width = max([len("value")] + [len(value) for _, value in rows])
  lines = [] if title is None else [title]
  lines.append("| %s | %s |" % ("metric".ljust(width),
                                 "value".rjust(value_width)))
  lines.append("|%s|%s|" % ("-" * (width + 2), "-" * (value_width + 1) + ":"))
  for name, value in rows:
    lines.append("| %s | %s |" % (name.ljust(width), value.rjust(value_width)))
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


def check_writable_dir(path, flag_name="--model_dir"):
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
  for path in paths:
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
    tf.io.gfile.rename(final_dir, old, overwrite=True)
  tf.io.gfile.rename(staging, final_dir)
  if old is not None:
    tf.io.gfile.rmtree(old)
