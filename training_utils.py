"""Helpers shared by the training scripts: run configuration, reports, files.

Nothing here builds model graphs (that is `ops/`) or reads flags (only the
scripts' `main` does).
"""
import json
import os
import tempfile

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
