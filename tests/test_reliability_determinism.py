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

import peterrec_finetune as ft
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
            "--data_dir=" + data_dir, "--model_dir=" + model_dir,
            "--train_steps=60", "--save_summary_steps=10",
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
  assert_identical_runs(first, second, ft.METRICS_FILE)
