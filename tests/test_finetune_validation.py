"""Validation during fine-tuning: the best checkpoint and early stopping.

On the planted-transfer world (tests/finetune_synthetic.py) the validation
accuracy moves during training; these tests check that the checkpoint the
script tests, exports and records is the best validation step of the
recorded history, that the test metrics are those of that checkpoint, that
the validation curve reaches TensorBoard, and that early stopping stops
after `patience` evaluations below the best.
"""
import glob
import json
import os

import pytest
import tensorflow as tf

import peterrec_finetune as ft
from tests import finetune_synthetic


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return finetune_synthetic.make_world(
      str(tmp_path_factory.mktemp("world")), num_pretrain_users=1000,
      num_finetune_users=300, pretrain_steps=150)


def _options(world, output_dir, **overrides):
  values = ft.default_options()
  values.update(
      data_dir=world["finetune_data"], output_dir=str(output_dir),
      init_checkpoint=world["checkpoint"], method="peterrec",
      task="classification", num_train_steps=60, train_batch_size=16,
      eval_batch_size=64, learning_rate=0.01, validation_fraction=0.2,
      # Seeded, not --deterministic: op determinism is process-wide and
      # would outlive this test in the pytest process.
      eval_every_steps=10, seed=3, tf_random_seed=3, export_task_patch=True,
      early_stopping_patience=0,
      log_step_count_steps=1000, save_summary_steps=1000,
      save_checkpoints_steps=100000)
  values.update(overrides)
  return values


def _curve(event_dir, tag):
  points = {}
  for path in glob.glob(os.path.join(event_dir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          points[event.step] = value.simple_value
  return points


def test_the_tested_checkpoint_is_the_best_validation_step(world, tmp_path):
  output_dir = tmp_path / "run"
  summary = ft.run(_options(world, output_dir))["metrics"]
  selection = summary["validation"]
  history = selection["history"]
  steps = [h["step"] for h in history]
  assert steps == list(range(10, 61, 10))  # every 10 steps, and the end
  best_value = max(h["metrics"]["accuracy"] for h in history)
  best_step = max(h["step"] for h in history
                  if h["metrics"]["accuracy"] == best_value)
  assert selection["best"]["step"] == best_step
  assert summary["global_step"] == best_step
  assert summary["plan"]["num_validation"] == 30  # 20% of 150 users
  # The validation curve is in TensorBoard, one point per evaluation.
  curve = _curve(str(output_dir / "eval_validation"), "accuracy")
  assert sorted(curve) == steps
  for h in history:
    assert curve[h["step"]] == pytest.approx(h["metrics"]["accuracy"])
  # The test metrics are those of the best checkpoint: evaluating the
  # output_dir again (no training) gives the same figures...
  again = ft.run(_options(world, output_dir, do_train=False,
                          export_task_patch=False))["metrics"]
  assert again["metrics"] == summary["metrics"]
  assert again["global_step"] == best_step
  # ... and so does the exported task patch.
  with open(output_dir / "task_patch" / "task_patch.json") as f:
    assert json.load(f)["global_step"] == best_step


def test_early_stopping_after_patience_evaluations_below_the_best(
    world, tmp_path):
  summary = ft.run(_options(world, tmp_path / "run", num_train_steps=400,
                            eval_every_steps=5, learning_rate=0.05,
                            early_stopping_patience=2,
                            validate_at_start=True))["metrics"]
  history = summary["validation"]["history"]
  assert [h["step"] for h in history[:2]] == [0, 5]  # the restored model too
  best = summary["validation"]["best"]
  last_step = history[-1]["step"]
  assert last_step < 400, "did not stop early"
  below = [h for h in history if h["step"] > best["step"]]
  assert len(below) == 2
  assert all(h["metrics"]["accuracy"] < best["metrics"]["accuracy"]
             for h in below)
  # No earlier stretch of 2 evaluations below the best so far.
  running, stale = -1.0, 0
  for h in history[:-1]:
    value = h["metrics"]["accuracy"]
    stale = 0 if value >= running else stale + 1
    running = max(running, value)
    assert stale < 2


def test_few_labels_train_on_the_asked_users_only(world, tmp_path):
  plan = ft.run(_options(world, tmp_path / "run", num_train_steps=5,
                         num_labelled_users=12, do_eval=False,
                         export_task_patch=False))["plan"]
  assert plan["num_train_users"] == 12
  assert plan["num_validation"] == 30
