"""--deterministic: the same command twice gives bit-identical results.

Each run is a separate process (op determinism is process-wide). Compared
exactly: every training loss the Estimator summarised, every variable of
the final checkpoint, and metrics.json (minus wall-clock timings).
"""
import glob
import json
import os
import sys

import numpy as np
import tensorflow as tf

import finetuning
from tests import test_reliability


def summarized_losses(model_dir):
  """{step: loss} from the training event files (not eval/)."""
  losses = {}
  for path in sorted(glob.glob(os.path.join(model_dir, "events.out.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == "loss":
          losses[event.step] = value.simple_value
  return losses


def checkpoint_values(model_dir):
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()}


def assert_identical_runs(first, second, metrics_file):
  losses = summarized_losses(first)
  assert len(losses) >= 3, losses
  assert summarized_losses(second) == losses
  a, b = checkpoint_values(first), checkpoint_values(second)
  assert sorted(a) == sorted(b)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  metrics = []
  for model_dir in (first, second):
    with open(os.path.join(model_dir, metrics_file)) as f:
      values = json.load(f)
    values.pop("timings", None)
    metrics.append(values)
  assert metrics[0] == metrics[1]
  return losses


def _run_twice(tmp_path, command_for):
  dirs = []
  for name in ("first", "second"):
    model_dir = str(tmp_path / name)
    result = test_reliability.run_command(command_for(model_dir))
    assert result.returncode == 0, result.stdout[-3000:]
    dirs.append(model_dir)
  return dirs


def test_pretrain_deterministic_twice(tmp_path):
  data_dir = test_reliability.pretrain_data(str(tmp_path))

  def command(model_dir):
    return [sys.executable, test_reliability.PRETRAIN_SCRIPT,
            "--data_dir=" + data_dir, "--output_dir=" + model_dir,
            "--num_train_steps=60", "--save_summary_steps=10",
            "--deterministic", "--seed=3"] + (
                test_reliability.TINY_PRETRAIN_FLAGS)

  first, second = _run_twice(tmp_path, command)
  losses = assert_identical_runs(first, second, "metrics.json")
  assert 60 in losses or max(losses) >= 50


def test_finetune_deterministic_twice(tmp_path):
  # --deterministic seeds everything (--seed and --tf_random_seed default
  # to 10 with it; unseeded otherwise, as the original).
  data_dir = test_reliability.finetune_world(str(tmp_path))

  def command(model_dir):
    return [sys.executable, test_reliability.FINETUNE_SCRIPT,
            "--data_dir=" + data_dir, "--output_dir=" + model_dir,
            "--num_train_steps=60", "--save_summary_steps=10",
            "--deterministic"] + test_reliability.TINY_FINETUNE_FLAGS

  first, second = _run_twice(tmp_path, command)
  assert_identical_runs(first, second, finetuning.METRICS_FILE)


def test_hooks_always_read_the_step_before_the_increment():
  """The step the Estimator's hooks fetch is the one before the update.

  Summaries are labelled with it; if the read raced the increment, two
  identical runs would write their summaries at different steps.
  """
  # The Estimator creates this read tensor; the hooks fetch it.
  from tensorflow.python.training import training_util  # pylint: disable=g-import-not-at-top
  import training_utils  # pylint: disable=g-import-not-at-top
  with tf.Graph().as_default():
    global_step = tf.compat.v1.train.get_or_create_global_step()
    step_read = training_util._get_or_create_global_step_read()  # pylint: disable=protected-access
    assert tf.compat.v1.get_collection(
        training_utils.GLOBAL_STEP_READ_KEY) == [step_read]
    weight = tf.compat.v1.get_variable("w", [64, 64])
    loss = tf.reduce_sum(tf.matmul(weight, weight))
    train_op = training_utils.minimize_and_count_step(
        tf.compat.v1.train.AdamOptimizer(0.01), loss)
    # Ordered by the graph, not by luck: the read is an ancestor of the op.
    ancestors, stack = set(), [train_op]
    while stack:
      op = stack.pop()
      for parent in [t.op for t in op.inputs] + list(op.control_inputs):
        if parent not in ancestors:
          ancestors.add(parent)
          stack.append(parent)
    assert step_read.op in ancestors
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      seen = [session.run([train_op, step_read])[1] for _ in range(200)]
      assert seen == list(range(200))
      assert session.run(global_step) == 200
