"""Faults and bad input, for real: SIGKILL and rerun, truncated and corrupted
TFRecords, data that does not match the model, out-of-range ids, an
unwritable model directory.

Every test runs the real scripts on real files (subprocesses where the
behaviour is the command line's: signals, exit status, stderr). Tiny
models (8 channels, 2 blocks) keep each test to seconds.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import data_loader
import finetuning
import nextitnet_pretrain as pretrain
import peterrec_finetune as ft
import training_utils
from tests import conftest
from tests import test_pretrain_convergence
from tfrecord_tools import convert_csv

PRETRAIN_SCRIPT = os.path.join(conftest.PROJECT_ROOT, "nextitnet_pretrain.py")
FINETUNE_SCRIPT = os.path.join(conftest.PROJECT_ROOT, "peterrec_finetune.py")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
TINY_PRETRAIN_FLAGS = ["--channels=8", "--dilations=1,2", "--train_batch_size=8"]
# Early stopping off: these runs test other things and must reach their end.
TINY_FINETUNE_FLAGS = ["--method=peterzero", "--channels=8",
                       "--dilations=1,2", "--train_batch_size=8",
                       "--eval_batch_size=16", "--num_eval_negatives=9",
                       "--early_stopping_patience=0"]


# ---------------------------------------------------------------------------
# Tiny real datasets (also used by test_serving and test_distributed)
# ---------------------------------------------------------------------------


def finetune_world(directory, task="recommendation", num_users=120,
                   num_items=40, source_length=6, num_targets=12, seed=0):
  """A small fine-tuning dataset whose targets depend on the sources.

  Each user walks on `num_items` items; the targets are (first source
  item mod num_targets) and its neighbour, or one class label for
  "classification". Converted with the project's converter (vocabularies
  refitted). Returns the converted data directory.
  """
  rng = np.random.RandomState(seed)
  sources, targets = [], []
  for _ in range(num_users):
    length = rng.randint(source_length - 2, source_length + 1)
    start = rng.randint(num_items)
    items = (start + np.cumsum(rng.randint(1, 3, size=length))) % num_items
    sources.append(["i%d" % i for i in items])
    if task == "classification":
      targets.append(["c%d" % (start % 3)])
    else:
      first = start % num_targets
      targets.append(["t%d" % first, "t%d" % ((first + 1) % num_targets)])
  data_dir = os.path.join(directory, "finetune_%s" % task)
  convert_csv.make_finetune_dataset(data_dir, sources, targets,
                                    test_fraction=0.25, task=task)
  return data_dir


def pretrain_data(directory, num_sequences=200, name="pretrain_data"):
  data_dir = os.path.join(directory, name)
  convert_csv.make_pretrain_dataset(
      data_dir, test_pretrain_convergence.planted_sequences(num_sequences),
      test_fraction=0.2)
  return data_dir


def checkpoint_steps(model_dir):
  state = tf.train.get_checkpoint_state(model_dir)
  if state is None:
    return []
  return sorted(int(path.rsplit("-", 1)[1])
                for path in state.all_model_checkpoint_paths)


def run_command(command, timeout=180):
  return subprocess.run(command, cwd=conftest.PROJECT_ROOT, env=ENV,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True, timeout=timeout)


def kill_after_checkpoint(command, model_dir, log_path, min_step,
                          timeout=120):
  """Starts `command`, SIGKILLs it once a checkpoint >= min_step exists."""
  with open(log_path, "w") as log:
    process = subprocess.Popen(command, cwd=conftest.PROJECT_ROOT,
                               stdout=log, stderr=subprocess.STDOUT, env=ENV)
    try:
      deadline = time.time() + timeout
      while time.time() < deadline and process.poll() is None:
        if any(step >= min_step for step in checkpoint_steps(model_dir)):
          break
        time.sleep(0.1)
    finally:
      process.send_signal(signal.SIGKILL)  # no chance to save on the way out
      process.wait()
  return process.returncode


# ---------------------------------------------------------------------------
# Resume after SIGKILL (pretraining: tests/test_pretrain_resume.py)
# ---------------------------------------------------------------------------


def test_finetune_kill_and_rerun_resumes(tmp_path):
  data_dir = finetune_world(str(tmp_path))
  output_dir = str(tmp_path / "finetune")
  train_steps = 600
  command = [sys.executable, FINETUNE_SCRIPT, "--data_dir=" + data_dir,
             "--output_dir=" + output_dir, "--num_train_steps=%d" %
             train_steps, "--save_checkpoints_steps=50",
             "--log_step_count_steps=50", "--tf_random_seed=1",
             "--seed=1"] + TINY_FINETUNE_FLAGS
  returncode = kill_after_checkpoint(command, output_dir,
                                     str(tmp_path / "first.log"), 100)
  assert returncode == -signal.SIGKILL, open(str(tmp_path /
                                                 "first.log")).read()[-3000:]
  killed_at = checkpoint_steps(output_dir)[-1]
  assert 100 <= killed_at < train_steps
  assert not os.path.exists(os.path.join(output_dir, finetuning.METRICS_FILE))

  result = run_command(command)
  assert result.returncode == 0, result.stdout[-3000:]
  assert ("%s/model.ckpt-%d exists: continuing from it" %
          (output_dir, killed_at)) in result.stdout
  assert checkpoint_steps(output_dir)[-1] == train_steps
  with open(os.path.join(output_dir, finetuning.METRICS_FILE)) as f:
    metrics = json.load(f)
  # Validation went on where it stopped: one history over both processes,
  # up to the last step, and the test metrics are the best step's.
  steps = [h["step"] for h in metrics["validation"]["history"]]
  assert steps == sorted(set(steps)) and steps[-1] == train_steps
  assert metrics["global_step"] == metrics["validation"]["best"]["step"]
  assert 0.0 <= metrics["metrics"]["hr@5"] <= 1.0
  # The task patch is complete and no staging directory is left behind.
  patch = os.path.join(output_dir, finetuning.TASK_PATCH_DIR)
  finetuning.load_task_patch(patch)
  assert not [n for n in os.listdir(output_dir) if ".tmp-" in n or
              ".old-" in n]


def test_kill_during_task_patch_export_never_leaves_half_a_patch(tmp_path):
  """A patch written so far is invisible until the rename."""
  data_dir = finetune_world(str(tmp_path))
  output_dir = str(tmp_path / "finetune")
  options = dict(ft.default_options(), data_dir=data_dir,
                 output_dir=output_dir, method="peterzero", channels=8,
                 dilations=["1", "2"], num_train_steps=5, train_batch_size=8,
                 num_eval_negatives=9, do_eval=False, tf_random_seed=1,
                 validation_fraction=0.0)  # the last checkpoint is exported
  first = ft.run(options)["task_patch"]
  patch = os.path.join(output_dir, finetuning.TASK_PATCH_DIR)
  # Simulate a process killed mid-export: its staging directory is left.
  staging = training_utils.staging_dir(patch)
  with open(os.path.join(staging, "task_patch.ckpt.index"), "wb") as f:
    f.write(b"half")
  description, _, _ = finetuning.load_task_patch(patch)  # the old one, intact
  assert description["finetuned_checkpoint"] == first["finetuned_checkpoint"]
  # The next export replaces the old patch in one rename.
  second = ft.run(dict(options, num_train_steps=10))["task_patch"]
  assert finetuning.load_task_patch(patch)[0] == second
  assert second["finetuned_checkpoint"].endswith("model.ckpt-10")


# ---------------------------------------------------------------------------
# Corrupt and truncated TFRecords
# ---------------------------------------------------------------------------


def test_truncated_tfrecord_stops_with_an_error_naming_the_file(tmp_path):
  data_dir = pretrain_data(str(tmp_path))
  train = os.path.join(data_dir, data_loader.TRAIN_FILE)
  with open(train, "rb") as f:
    content = f.read()
  with open(train, "wb") as f:  # the tail of the last record is missing
    f.write(content[:-7])
  result = run_command([sys.executable, PRETRAIN_SCRIPT,
                        "--data_dir=" + data_dir,
                        "--output_dir=" + str(tmp_path / "model"),
                        "--num_train_steps=200", "--do_eval=false"] +
                       TINY_PRETRAIN_FLAGS)
  assert result.returncode != 0
  last_line = result.stdout.strip().splitlines()[-1]
  assert last_line.startswith("error: corrupt or truncated TFRecord file: "
                              "%s" % train), result.stdout[-3000:]
  assert "truncated record" in last_line


def test_corrupted_record_in_finetune_eval_names_the_file(tmp_path):
  data_dir = finetune_world(str(tmp_path))
  test_file = os.path.join(data_dir, data_loader.TEST_FILE)
  with open(test_file, "rb") as f:
    content = bytearray(f.read())
  content[len(content) // 2] ^= 0xFF  # one flipped byte: a CRC mismatch
  with open(test_file, "wb") as f:
    f.write(bytes(content))
  options = dict(ft.default_options(), data_dir=data_dir,
                 output_dir=str(tmp_path / "out"), method="peterzero",
                 channels=8, dilations=["1", "2"], num_train_steps=3,
                 train_batch_size=8, num_eval_negatives=9,
                 export_task_patch=False)
  with pytest.raises(training_utils.RunError,
                     match=r"corrupt or truncated TFRecord file: %s \(\d+ "
                     r"good records, then: corrupted record" % test_file):
    ft.run(options)


# ---------------------------------------------------------------------------
# Data that does not match the model
# ---------------------------------------------------------------------------


def test_pretrain_output_dir_of_other_data_is_refused_before_training(
    tmp_path):
  model_dir = str(tmp_path / "model")
  settings = pretrain.default_options(
      data_dir=pretrain_data(str(tmp_path)), output_dir=model_dir,
      channels=8, dilations=[1, 2], train_batch_size=8, num_train_steps=2,
      do_eval=False)
  pretrain.run(settings)
  before = checkpoint_steps(model_dir)
  # Other data: another item vocabulary.
  other = str(tmp_path / "other")
  convert_csv.make_pretrain_dataset(other, [["a", "b", "c"], ["b", "c", "d"]],
                                    test_fraction=0.0)
  with pytest.raises(ValueError, match=r"holds a model of another "
                     r"configuration \(item_size: \d+ -> 5\)"):
    pretrain.run(dict(settings, data_dir=other, num_train_steps=4))
  assert checkpoint_steps(model_dir) == before  # nothing trained


def test_finetune_output_dir_of_other_data_is_refused(tmp_path):
  output_dir = str(tmp_path / "out")
  options = dict(ft.default_options(), data_dir=finetune_world(str(tmp_path)),
                 output_dir=output_dir, method="peterzero", channels=8,
                 dilations=["1", "2"], num_train_steps=2, train_batch_size=8,
                 num_eval_negatives=9, do_eval=False,
                 export_task_patch=False)
  ft.run(options)
  other = finetune_world(str(tmp_path / "b"), num_targets=7)
  with pytest.raises(finetuning.CompatibilityError,
                     match=r"target-item/allitem_embeddings_target: "
                     r"checkpoint \[13, 8\], data/configuration \[8, 8\]"):
    ft.run(dict(options, data_dir=other, num_train_steps=4))
  assert checkpoint_steps(output_dir)[-1] == 2


def test_metadata_that_does_not_match_the_files_is_refused(tmp_path):
  data_dir = pretrain_data(str(tmp_path))
  path = os.path.join(data_dir, data_loader.METADATA_FILE)
  with open(path) as f:
    metadata = json.load(f)
  metadata["item_vocab_size"] += 3
  with open(path, "w") as f:
    json.dump(metadata, f)
  result = run_command([sys.executable, PRETRAIN_SCRIPT,
                        "--data_dir=" + data_dir,
                        "--output_dir=" + str(tmp_path / "model")] +
                       TINY_PRETRAIN_FLAGS)
  assert result.returncode != 0
  assert "does not match the metadata" in result.stdout
  assert not os.path.exists(str(tmp_path / "model"))


# ---------------------------------------------------------------------------
# Out-of-range ids
# ---------------------------------------------------------------------------


def _rewrite_records(path, feature_lists):
  with tf.io.TFRecordWriter(path) as writer:
    for features in feature_lists:
      writer.write(tf.train.Example(features=tf.train.Features(feature={
          name: tf.train.Feature(int64_list=tf.train.Int64List(value=values))
          for name, values in features.items()})).SerializeToString())


def test_out_of_range_item_id_is_an_error_not_a_zero_embedding(tmp_path):
  data_dir = pretrain_data(str(tmp_path))
  metadata = data_loader.load_metadata(data_dir)
  size, length = metadata["item_vocab_size"], metadata["seq_length"]
  good = [1] * length
  bad = [1] * (length - 1) + [size + 4]  # written with another vocabulary
  _rewrite_records(metadata["paths"]["train"],
                   [{"itemseq": good}] * 20 + [{"itemseq": bad}] * 20)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"item id in features\[itemseq\] out of range: "
                     r"every id must be in \[0, %d\)" % size):
    pretrain.run(pretrain.default_options(
        data_dir=data_dir, output_dir=str(tmp_path / "model"), channels=8,
        dilations=[1, 2], train_batch_size=8, num_train_steps=20, do_eval=False,
        shuffle_buffer=1))


def test_out_of_range_target_id_is_an_error(tmp_path):
  data_dir = finetune_world(str(tmp_path))
  metadata = data_loader.load_metadata(data_dir)
  size = metadata["target_vocab_size"]
  _rewrite_records(metadata["paths"]["train"], [
      {"source": [1] * metadata["source_length"], "target": [size],
       "user": [user]} for user in range(16)])
  options = dict(ft.default_options(), data_dir=data_dir,
                 output_dir=str(tmp_path / "out"), method="peterzero",
                 channels=8, dilations=["1", "2"], num_train_steps=2,
                 train_batch_size=8, do_eval=False, export_task_patch=False)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"target id in features\[target\] out of range:"
                     r" every id must be in \[0, %d\)" % size):
    ft.run(options)


# ---------------------------------------------------------------------------
# Unwritable model directory
# ---------------------------------------------------------------------------


def test_unwritable_output_dir_fails_fast_with_the_path(tmp_path):
  # Tests may run as root, which ignores chmod: a directory below a regular
  # file cannot be created by anyone.
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  model_dir = str(blocker / "model")
  start = time.time()
  # --data_dir does not exist either: the output_dir is checked first.
  for script in (PRETRAIN_SCRIPT, FINETUNE_SCRIPT):
    result = run_command([sys.executable, script,
                          "--data_dir=" + str(tmp_path / "missing"),
                          "--output_dir=" + model_dir])
    assert result.returncode != 0
    assert ("error: --output_dir %s is not a writable directory" % model_dir
            in result.stdout), result.stdout[-2000:]
  print("two refusals in %.1f s (mostly importing TensorFlow)" %
        (time.time() - start))


def test_finetune_under_tf_config_refuses_no_evaluation_before_anything(
    tmp_path, monkeypatch):
  # Fine-tuning runs on a cluster (tests/test_distributed_finetune.py)
  # through train_and_evaluate, which needs both training and evaluation.
  monkeypatch.setenv("TF_CONFIG", json.dumps({
      "cluster": {"chief": ["127.0.0.1:1"], "ps": ["127.0.0.1:2"]},
      "task": {"type": "chief", "index": 0}}))
  output_dir = tmp_path / "out"
  for flag in ("do_eval", "do_train"):
    options = dict(ft.default_options(), data_dir=str(tmp_path / "missing"),
                   output_dir=str(output_dir), **{flag: False})
    with pytest.raises(training_utils.RunError,
                       match=r"under TF_CONFIG \(chief task 0\) training and "
                       "evaluation run through train_and_evaluate: --do_train "
                       "and --do_eval must be true"):
      ft.run(options)
  assert not output_dir.exists()
