"""Helpers shared by the converters: atomic outputs, progress, TFRecords."""
import inspect
import json
import os
import shlex
import sys
import time

from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

import data_loader
import training_utils


class AtomicOutputs(object):
  """Files written under temporary names, renamed together at the end.

  Usage:
    with AtomicOutputs(output_dir) as out:
      write_something(out.path("train.tfrecord"))
      ...
    # Leaving the block normally renames every file to its final name (in
    # the order `path` was called); an exception deletes the temporary files
    # and, if this object created `output_dir`, the then-empty directory.

  Temporary names are hidden (".name.tmp-<pid>-<random>") so a glob such as
  "*.tfrecord" never picks up a half-written file.
  """

  def __init__(self, output_dir, remove_on_commit=()):
    """`remove_on_commit`: stale final names to delete when committing."""
    self.output_dir = data_loader.absolute_path(output_dir)
    self._pending = []
    self._created_dir = False
    self._remove_on_commit = list(remove_on_commit)

  def __enter__(self):
    gfile = tf.io.gfile
    if gfile.exists(self.output_dir) and not gfile.isdir(self.output_dir):
      raise ValueError("output path exists and is not a directory: %s" %
                       self.output_dir)
    if not gfile.isdir(self.output_dir):
      gfile.makedirs(self.output_dir)
      self._created_dir = True
    return self

  def path(self, name):
    """Temporary path to write `name` to."""
    final = os.path.join(self.output_dir, name)
    tmp = data_loader.temporary_name(final)
    self._pending.append((tmp, final))
    return tmp

  def final_path(self, name):
    return os.path.join(self.output_dir, name)

  def __exit__(self, exc_type, exc_value, traceback):
    if exc_type is None:
      for name in self._remove_on_commit:
        data_loader.remove_if_exists(os.path.join(self.output_dir, name))
      for tmp, final in self._pending:
        tf.io.gfile.rename(tmp, final, overwrite=True)
      return False
    for tmp, _ in self._pending:
      data_loader.remove_if_exists(tmp)
    if self._created_dir and not tf.io.gfile.listdir(self.output_dir):
      tf.io.gfile.rmtree(self.output_dir)  # empty: nothing else is lost
    return False


class ProgressLogger(object):
  """Logs reading/writing progress at most every `interval` seconds."""

  def __init__(self, what, interval=5.0):
    self._what = what
    self._interval = interval
    self._last = time.time()
    self._start = self._last

  def lines(self, lines_read, bytes_read, total_bytes):
    """A `progress_fn` for `data_loader.iter_text_lines` (ETA by bytes)."""
    now = time.time()
    if now - self._last >= self._interval and bytes_read > 0:
      self._last = now
      logging.info(training_utils.progress_line(
          self._what, bytes_read // 1000000, max(total_bytes // 1000000, 1),
          "MB", now - self._start, (lines_read, "lines")))

  def records(self, done, total):
    now = time.time()
    if now - self._last >= self._interval or (
        done == total and now - self._start >= self._interval):
      self._last = now
      logging.info(training_utils.progress_line(
          self._what, done, total, "records", now - self._start))


def define_csv_output_flags():
  """--output_dir, --pad_token, --overwrite of the public-dataset converters."""
  flags.DEFINE_string("output_dir", None, "Where to write the CSVs.")
  flags.DEFINE_string("pad_token", "0", "Left-padding token.")
  flags.DEFINE_bool("overwrite", False, "Replace existing output CSVs.")


def call_with_flags(function, **flag_names):
  """Calls `function` with the parsed flags of its parameters' names (or of
  `flag_names[parameter]`); bad input ends in a one-line `error: ...`."""
  kwargs = {name: flags.FLAGS[flag_names.get(name, name)].value
            for name in inspect.signature(function).parameters}
  try:
    return function(**kwargs)
  except (ValueError, OSError) as e:
    sys.exit("error: %s" % e)


def command_line(module):
  """The command that started this process, as `python -m module args`."""
  return " ".join(["python", "-m", module] +
                  [shlex.quote(a) for a in sys.argv[1:]])


def python_call(function_name, **kwargs):
  """A readable record of a Python call, for the metadata's `command`."""
  args = ", ".join("%s=%r" % (k, v) for k, v in sorted(kwargs.items()))
  return "%s(%s)" % (function_name, args)


def write_json(path, obj):
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def int64_feature(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def write_examples(path, features, expected_lengths, what, log_first=3):
  """Writes tf.train.Examples with fixed-length int64 features.

  Args:
    path: output file (write it to a temporary name).
    features: dict name -> int numpy array [num_examples, length].
    expected_lengths: dict name -> length; every feature is checked.
    what: a name for progress logs ("train", "test").
    log_first: how many first examples to log (BERT's writer does this).

  Returns:
    The number of examples written.
  """
  names = sorted(features)
  arrays = {}
  num = None
  for name in names:
    array = np.asarray(features[name], dtype=np.int64)
    if array.ndim != 2 or array.shape[1] != expected_lengths[name]:
      raise ValueError("feature %r has shape %s, expected [N, %d]" %
                       (name, array.shape, expected_lengths[name]))
    if num is not None and array.shape[0] != num:
      raise ValueError("features have different numbers of examples")
    num = array.shape[0]
    arrays[name] = array.tolist()
  num = num or 0
  progress = ProgressLogger("writing %s" % what)
  with tf.io.TFRecordWriter(path) as writer:
    for i in range(num):
      example = tf.train.Example(features=tf.train.Features(feature={
          name: int64_feature(arrays[name][i]) for name in names
      }))
      writer.write(example.SerializeToString())
      if i < log_first:
        logging.info("%s example %d: %s", what, i, " ".join(
            "%s=%s" % (name, arrays[name][i]) for name in names))
      if (i + 1) % 20000 == 0:
        progress.records(i + 1, num)
  return num


# ---------------------------------------------------------------------------
# Writing the CSV formats from per-user item lists (used by the converters
# from public datasets)
# ---------------------------------------------------------------------------


def check_csv_outputs(output_dir, names, overwrite):
  """Refuses to replace existing converter outputs unless `overwrite`."""
  existing = [n for n in names
              if tf.io.gfile.exists(os.path.join(output_dir, n))]
  if existing and not overwrite:
    raise ValueError("%s already holds %s; choose another --output_dir or "
                     "pass --overwrite" % (output_dir, ", ".join(existing)))


def pad_sequence(items, max_seq_length, pad_token):
  """The last `max_seq_length` items, left-padded with `pad_token`.

  max_seq_length 0 keeps every item and pads nothing (the caller pads to
  the longest sequence if it wants equal lengths).
  """
  if max_seq_length <= 0:
    return list(items)
  items = list(items)[-max_seq_length:]
  if pad_token is None:
    return items
  return [pad_token] * (max_seq_length - len(items)) + items


def length_stats(lengths):
  """{"min", "mean", "median", "max"} of a list of ints."""
  lengths = np.asarray(lengths, dtype=np.float64)
  if lengths.size == 0:
    return {"min": 0, "mean": 0.0, "median": 0.0, "max": 0}
  return {"min": int(lengths.min()), "mean": round(float(lengths.mean()), 2),
          "median": float(np.median(lengths)), "max": int(lengths.max())}
