r"""Runs pretraining or fine-tuning as a parameter-server cluster on this machine.

The Estimator's own engine does the distribution: each task is the same
`nextitnet_pretrain.py` (`--script=pretrain`, the default) or
`peterrec_finetune.py` (`--script=finetune`) command with its own
`TF_CONFIG`, and `tf.estimator.train_and_evaluate` reads it (between-graph
replication: variables on the ps tasks through `replica_device_setter`, the
chief initializes, checkpoints and writes summaries, every worker trains
asynchronously, the evaluator evaluates each new checkpoint and, at the
end, writes metrics.json; fine-tuning's evaluator validates each checkpoint
and tests the best). Nothing here is specific to one machine except the
addresses: docs/SCALE.md shows the same TF_CONFIGs for real hosts.

  python -m distributed.local_cluster --data_dir=runs/ml1m_data \
      --output_dir=runs/ml1m_cluster --num_train_steps=300 --num_workers=1 \
      -- --channels=64 --train_batch_size=32
  python -m distributed.local_cluster --script=finetune \
      --data_dir=runs/task_data --output_dir=runs/task_cluster \
      --num_train_steps=300 -- --init_checkpoint=runs/ml1m_cluster

Tasks: ps x num_ps, chief, worker x num_workers, evaluator, all on
127.0.0.1 ports picked free at start. TensorFlow's gRPC server binds every
interface (it hard-codes 0.0.0.0), so with `--isolate_network` (the
default when `unshare` works) the whole cluster runs in a private network
namespace whose only interface is the loopback. The launcher waits for
chief, workers and evaluator (bounded by --timeout), then always stops
every task it started (the ps tasks never exit by themselves), and checks
the final checkpoint's global_step and metrics.json (fine-tuning: of the
checkpoint the validation selected). The chief waits for a worker's first
step before its own (the Estimator starts workers 5 s late), so every
training task takes part even in a short run (the launcher passes its
--chief_waits_for_workers_secs to either script). Each task's output is in
output_dir/cluster_logs/.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from absl import app
from absl import flags

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"pretrain": os.path.join(PROJECT_ROOT, "nextitnet_pretrain.py"),
           "finetune": os.path.join(PROJECT_ROOT, "peterrec_finetune.py")}
HOST = "127.0.0.1"
INSIDE_NAMESPACE_ENV = "PETERREC_PRIVATE_NETNS"
LOG_DIR = "cluster_logs"


def free_ports(count):
  """`count` distinct free TCP ports on 127.0.0.1."""
  sockets = []
  try:
    for _ in range(count):
      s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      s.bind((HOST, 0))
      sockets.append(s)
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def cluster_spec(num_workers, num_ps, ports=None):
  """{"chief": [...], "worker": [...], "ps": [...]} on 127.0.0.1."""
  ports = ports or free_ports(1 + num_workers + num_ps)
  addresses = ["%s:%d" % (HOST, p) for p in ports]
  cluster = {"chief": addresses[:1], "ps": addresses[1 + num_workers:]}
  if num_workers:
    cluster["worker"] = addresses[1:1 + num_workers]
  return cluster


def tf_config(cluster, task_type, index=0):
  return json.dumps({"cluster": cluster,
                     "task": {"type": task_type, "index": index}})


def tasks_of(cluster):
  """[(type, index)]: ps first (the others connect to them), evaluator last."""
  tasks = [("ps", i) for i in range(len(cluster.get("ps", [])))]
  tasks.append(("chief", 0))
  tasks += [("worker", i) for i in range(len(cluster.get("worker", [])))]
  tasks.append(("evaluator", 0))
  return tasks


def _stop(process, grace_secs=5.0):
  """SIGTERM, then SIGKILL after `grace_secs`; always reaps the process."""
  if process.poll() is None:
    process.send_signal(signal.SIGTERM)
    try:
      process.wait(timeout=grace_secs)
    except subprocess.TimeoutExpired:
      process.kill()
  process.wait()


def task_command(script, data_dir, output_dir, num_train_steps,
                 chief_waits_secs, extra_args=(), python=sys.executable):
  """The command every task runs (only TF_CONFIG differs)."""
  command = [python, SCRIPTS[script], "--data_dir=" + data_dir,
             "--output_dir=" + output_dir,
             "--num_train_steps=%d" % num_train_steps, "--do_eval=true",
             "--chief_waits_for_workers_secs=%d" % chief_waits_secs]
  return command + list(extra_args)


def run_cluster(data_dir, output_dir, num_train_steps, num_workers=1, num_ps=1,
                extra_args=(), timeout=600, python=sys.executable,
                chief_waits_secs=60, script="pretrain"):
  """Launches the cluster, waits, stops every task. Returns a summary dict.

  `script`: "pretrain" (nextitnet_pretrain.py) or "finetune"
  (peterrec_finetune.py).

  Raises:
    RuntimeError when a task fails or the run exceeds `timeout` seconds
    (the message points at the task's log).
  """
  cluster = cluster_spec(num_workers, num_ps)
  log_dir = os.path.join(output_dir, LOG_DIR)
  os.makedirs(log_dir, exist_ok=True)
  command = task_command(script, data_dir, output_dir, num_train_steps,
                         chief_waits_secs, extra_args, python)
  processes = {}
  logs = []
  start = time.time()
  try:
    for task_type, index in tasks_of(cluster):
      name = "%s_%d" % (task_type, index)
      log = open(os.path.join(log_dir, name + ".log"), "w")
      logs.append(log)
      env = dict(os.environ, TF_CONFIG=tf_config(cluster, task_type, index),
                 TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL",
                                                     "1"))
      processes[name] = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
    waited = [n for n in processes if not n.startswith("ps_")]
    deadline = start + timeout
    while time.time() < deadline:
      codes = {n: processes[n].poll() for n in waited}
      failed = {n: c for n, c in codes.items() if c not in (None, 0)}
      if failed:
        raise RuntimeError("task(s) %s failed; see %s" % (
            failed, ", ".join(os.path.join(log_dir, n + ".log")
                              for n in failed)))
      if all(c == 0 for c in codes.values()):
        break
      time.sleep(0.5)
    else:
      running = [n for n in waited if processes[n].poll() is None]
      raise RuntimeError("the cluster did not finish in %d s (still running: "
                         "%s); logs in %s" % (timeout, running, log_dir))
  finally:
    for process in processes.values():
      _stop(process)
    for log in logs:
      log.close()
  return verify(output_dir, num_train_steps, dict(
      script=script, cluster=cluster, seconds=round(time.time() - start, 1),
      returncodes={n: p.returncode for n, p in processes.items()}))


def verify(output_dir, num_train_steps, summary):
  """Checks the chief's final checkpoint and the evaluator's metrics.json.

  Fine-tuning's metrics.json is of the checkpoint its validation selected
  (any validated step), else of the final one.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  latest = tf.train.latest_checkpoint(output_dir)
  if latest is None:
    raise RuntimeError("no checkpoint in %s" % output_dir)
  step = int(tf.train.load_variable(latest, "global_step"))
  if step < num_train_steps:
    raise RuntimeError("checkpoint %s is at step %d < %d" %
                       (latest, step, num_train_steps))
  metrics_path = os.path.join(output_dir, "metrics.json")
  if not os.path.exists(metrics_path):
    raise RuntimeError("the evaluator wrote no %s" % metrics_path)
  with open(metrics_path) as f:
    metrics = json.load(f)
  selected = (metrics.get("validation") or {}).get("best")
  if selected is not None and metrics["global_step"] != selected["step"]:
    raise RuntimeError("%s is for step %d, not the selected step %d" %
                       (metrics_path, metrics["global_step"], selected["step"]))
  if selected is None and metrics["global_step"] < num_train_steps:
    raise RuntimeError("%s is for step %d < %d" %
                       (metrics_path, metrics["global_step"], num_train_steps))
  summary.update(checkpoint=latest, global_step=step, metrics=metrics)
  return summary


def can_isolate_network():
  """True when `unshare --net` (a private network namespace) works here."""
  if not (shutil.which("unshare") and shutil.which("ip")):
    return False
  try:
    return subprocess.run(
        ["unshare", "--net", "--", "ip", "link", "set", "lo", "up"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        timeout=10).returncode == 0
  except (OSError, subprocess.TimeoutExpired):
    return False


def in_private_network(argv):
  """The command that reruns `argv` inside a loopback-only namespace."""
  return (["unshare", "--net", "--", "sh", "-c",
           'ip link set lo up && exec "$@"', "sh"] + list(argv))


def define_flags():
  flags.DEFINE_enum("script", "pretrain", sorted(SCRIPTS),
                    "What the cluster runs: pretrain (nextitnet_pretrain.py) "
                    "or finetune (peterrec_finetune.py); the flags after -- "
                    "go to it.")
  flags.DEFINE_string("data_dir", None, "Dataset of the script (convert_csv "
                      "--kind=pretrain or --kind=finetune).")
  flags.DEFINE_string("output_dir", None, "Shared model directory (a shared "
                      "file system on real machines).")
  flags.DEFINE_integer("num_train_steps", 300, "Total global steps.")
  flags.DEFINE_integer("num_workers", 1, "Workers besides the chief.")
  flags.DEFINE_integer("num_ps", 1, "Parameter servers.")
  flags.DEFINE_integer("chief_waits_for_workers_secs", 60,
                       "The chief starts training only after a worker's "
                       "first step (or this many seconds), so that every "
                       "worker takes part even in short runs (passed to "
                       "the script as its --chief_waits_for_workers_secs).")
  flags.DEFINE_integer("timeout", 600, "Seconds before every task is stopped "
                       "and the run fails.")
  flags.DEFINE_enum("isolate_network", "auto", ["auto", "true", "false"],
                    "Run the cluster in a private loopback-only network "
                    "namespace (TensorFlow's servers listen on every "
                    "interface). auto: when `unshare --net` works.")


def main(argv):
  f = flags.FLAGS
  isolate = f.isolate_network
  if os.environ.get(INSIDE_NAMESPACE_ENV) != "1" and isolate != "false":
    if isolate == "true" or can_isolate_network():
      env = dict(os.environ, **{INSIDE_NAMESPACE_ENV: "1"})
      command = in_private_network(
          [sys.executable, "-m", "distributed.local_cluster"] + sys.argv[1:])
      sys.exit(subprocess.call(command, cwd=PROJECT_ROOT, env=env))
    print("warning: no private network namespace; TensorFlow's servers "
          "listen on every interface", file=sys.stderr)
  try:
    summary = run_cluster(f.data_dir, f.output_dir, f.num_train_steps,
                          f.num_workers, f.num_ps, extra_args=argv[1:],
                          timeout=f.timeout,
                          chief_waits_secs=f.chief_waits_for_workers_secs,
                          script=f.script)
  except RuntimeError as e:
    sys.exit("error: %s" % e)
  summary["private_network"] = os.environ.get(INSIDE_NAMESPACE_ENV) == "1"
  print(json.dumps(summary, indent=2, sort_keys=True))


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["data_dir", "output_dir"])
  app.run(main)
