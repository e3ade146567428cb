"""A real parameter-server cluster (ps, chief, worker, evaluator) on loopback.

`python -m distributed.local_cluster` launches nextitnet_pretrain.py four
times with TF_CONFIG, in a private network namespace whose only interface
is 127.0.0.1 (TensorFlow's gRPC servers listen on every interface). The
tests check the checkpoint's global_step, the evaluator's metrics.json,
that the worker trained, and that no process is left behind, pass or fail.
"""
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from distributed import local_cluster
from tests import conftest
from tests import test_reliability

pytestmark = pytest.mark.skipif(
    not local_cluster.can_isolate_network(),
    reason="needs `unshare --net` (a loopback-only network namespace): "
    "TensorFlow's servers would otherwise listen on every interface")


def processes_mentioning(text):
  """PIDs whose command line contains `text`."""
  pids = []
  for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) == os.getpid():
      continue
    try:
      with open("/proc/%s/cmdline" % pid, "rb") as f:
        if text.encode() in f.read():
          pids.append(int(pid))
    except OSError:
      pass
  return pids


def run_launcher(args, marker, timeout):
  """Runs the launcher in its own session; kills the whole group after."""
  process = subprocess.Popen(
      [sys.executable, "-m", "distributed.local_cluster",
       "--isolate_network=true"] + args,
      cwd=conftest.PROJECT_ROOT, env=test_reliability.ENV,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      start_new_session=True)
  try:
    output, _ = process.communicate(timeout=timeout)
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
    leftovers = processes_mentioning(marker)
    for pid in leftovers:  # never leave them running, even when failing
      os.kill(pid, signal.SIGKILL)
  assert not leftovers, "tasks left running: %s" % leftovers
  return process.returncode, output


def test_cluster_trains_checkpoints_and_evaluates(tmp_path):
  data_dir = test_reliability.pretrain_data(str(tmp_path))
  model_dir = str(tmp_path / "cluster_model")
  # The Estimator starts the worker 5 s late; the launcher makes the chief
  # wait for the worker's first step, so both train however fast the chief.
  steps = 300
  code, output = run_launcher(
      ["--data_dir=" + data_dir, "--output_dir=" + model_dir,
       "--num_train_steps=%d" % steps, "--num_workers=1", "--num_ps=1",
       "--timeout=150", "--", "--channels=8", "--dilations=1,2",
       "--train_batch_size=8", "--save_checkpoints_steps=150",
       "--eval_throttle_secs=1", "--log_step_count_steps=50"],
      model_dir, timeout=170)
  assert code == 0, output[-4000:]
  summary = json.loads(output[output.index("{\n"):])
  assert summary["private_network"]
  addresses = [a for hosts in summary["cluster"].values() for a in hosts]
  assert len(addresses) == 3
  assert all(a.startswith("127.0.0.1:") for a in addresses)
  rc = summary["returncodes"]
  assert rc["chief_0"] == rc["worker_0"] == rc["evaluator_0"] == 0
  assert rc["ps_0"] == -signal.SIGTERM  # stopped by the launcher
  assert summary["global_step"] >= steps
  metrics = summary["metrics"]
  assert metrics["global_step"] >= steps
  assert metrics["num_examples"] == 40
  assert 0.0 <= metrics["hr@5"] <= 1.0
  with open(os.path.join(model_dir, "metrics.json")) as f:
    assert json.load(f)["global_step"] == metrics["global_step"]
  # Both training tasks ran steps against the shared global_step.
  logs = os.path.join(model_dir, local_cluster.LOG_DIR)
  for task in ("chief_0", "worker_0"):
    with open(os.path.join(logs, task + ".log")) as f:
      text = f.read()
    assert re.search(r"step \d+/\d+ \(\d+%\): loss ", text), text[-2000:]
  with open(os.path.join(logs, "worker_0.log")) as f:
    assert "worker task 0 done" in f.read()
  with open(os.path.join(logs, "chief_0.log")) as f:
    assert "a worker has started training" in f.read()


def test_failing_cluster_is_stopped_and_reported(tmp_path):
  model_dir = str(tmp_path / "cluster_model")
  code, output = run_launcher(
      ["--data_dir=" + str(tmp_path / "no_such_data"),
       "--output_dir=" + model_dir, "--num_train_steps=10", "--timeout=120"],
      model_dir, timeout=150)
  assert code != 0
  assert "error: task(s)" in output and "failed; see" in output, output[-3000:]


def test_tf_config_layout():
  cluster = local_cluster.cluster_spec(2, 1, ports=[1, 2, 3, 4])
  assert cluster == {"chief": ["127.0.0.1:1"],
                     "worker": ["127.0.0.1:2", "127.0.0.1:3"],
                     "ps": ["127.0.0.1:4"]}
  assert json.loads(local_cluster.tf_config(cluster, "worker", 1)) == {
      "cluster": cluster, "task": {"type": "worker", "index": 1}}
  assert local_cluster.tasks_of(cluster) == [
      ("ps", 0), ("chief", 0), ("worker", 0), ("worker", 1),
      ("evaluator", 0)]
