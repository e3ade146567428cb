"""Killing a pretraining run and running the same command again resumes it."""
import os
import re
import signal
import subprocess
import sys
import time

import tensorflow as tf

from tests import conftest
from tests import test_pretrain_convergence
from tfrecord_tools import convert_csv

SCRIPT = os.path.join(conftest.PROJECT_ROOT, "nextitnet_pretrain.py")


def _checkpoint_steps(model_dir):
  state = tf.train.get_checkpoint_state(model_dir)
  if state is None:
    return []
  return sorted(int(path.rsplit("-", 1)[1])
                for path in state.all_model_checkpoint_paths)


def test_kill_and_rerun_resumes_from_last_checkpoint(tmp_path):
  data_dir = str(tmp_path / "data")
  convert_csv.make_pretrain_dataset(
      data_dir, test_pretrain_convergence.planted_sequences(200),
      test_fraction=0.2)
  model_dir = str(tmp_path / "model")
  train_steps = 1000
  command = [
      sys.executable, SCRIPT, "--data_dir=" + data_dir,
      "--output_dir=" + model_dir, "--channels=8", "--dilations=1,2",
      "--train_batch_size=8", "--num_train_steps=%d" % train_steps,
      "--save_checkpoints_steps=50", "--log_step_count_steps=50",
      "--do_eval=false"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  log_path = str(tmp_path / "first.log")
  with open(log_path, "w") as log:
    first = subprocess.Popen(command, cwd=conftest.PROJECT_ROOT, stdout=log,
                             stderr=subprocess.STDOUT, env=env)
    try:
      deadline = time.time() + 90
      while time.time() < deadline and first.poll() is None:
        if any(step >= 100 for step in _checkpoint_steps(model_dir)):
          break
        time.sleep(0.2)
    finally:
      first.send_signal(signal.SIGKILL)  # no chance to save on the way out
      first.wait()
  steps_after_kill = _checkpoint_steps(model_dir)
  assert steps_after_kill and steps_after_kill[-1] >= 100, open(
      log_path).read()[-3000:]
  killed_at = steps_after_kill[-1]
  print("killed after checkpoint", killed_at)
  assert killed_at < train_steps

  # The same command again: it starts from the checkpoint, not from step 0,
  # and stops at the same total.
  result = subprocess.run(command, cwd=conftest.PROJECT_ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stdout[-3000:]
  assert ("%s/model.ckpt-%d exists: continuing from it" %
          (model_dir, killed_at)) in result.stdout
  assert _checkpoint_steps(model_dir)[-1] == train_steps
  # Steps counted from the restored step, not from 0.
  reported = [int(step) for step in re.findall(
      r"step (\d+)/%d \(" % train_steps, result.stdout)]
  assert reported and min(reported) > killed_at, result.stdout[-3000:]
  assert reported[-1] == train_steps
