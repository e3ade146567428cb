"""The two scripts started as users start them, for the benchmarks.

Each run is a process of its own (`benchmarks/script_child.py`: the
script's `__main__` with a stopwatch), with the command-line flags a user
gives for a workload (`script_arguments`) and the user's environment: the
benchmark's own settings (TF_OVERRIDE_GLOBAL_THREADPOOL) are removed, so
the script sizes its thread pools itself as it does for users.
"""
import json
import os
import subprocess
import sys
import time

from benchmarks import script_child
from benchmarks import workloads

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARK_ONLY_ENVIRONMENT = ("TF_OVERRIDE_GLOBAL_THREADPOOL",
                              "PETERREC_BENCH_STEPS")


def script_of(workload):
  """The script module a workloads.Workload runs."""
  return "nextitnet_pretrain" if workload.pretraining else "peterrec_finetune"


def script_arguments(workload, preset, data, output_dir, num_train_steps):
  """The flags a user gives the script to train `workload` at `preset`.

  Everything else is the script's default (checkpoint, summary and
  progress cadences, threads, the fine-tuning loss, sampler and learning
  rate), except that fine-tuning validates less often than the window is
  long and neither script evaluates at the end (the process stops after
  the timed window anyway).
  """
  common = ["--output_dir=%s" % output_dir,
            "--num_train_steps=%d" % num_train_steps, "--do_eval=false"]
  if workload.pretraining:
    return common + [
        "--data_dir=%s" % os.path.dirname(data["pretrain"]["paths"]["train"]),
        "--encoder=%s" % workload.encoder,
        "--channels=%d" % preset.channels,
        "--dilations=%s" % ",".join(map(str, preset.dilations)),
        "--kernel_size=%d" % preset.kernel_size,
        "--softmax=%s" % workload.softmax,
        "--num_sampled=%d" % workloads.default_num_sampled(preset),
        "--train_batch_size=%d" % preset.pretrain_batch]
  return common + [
      "--data_dir=%s" % os.path.dirname(data["finetune"]["paths"]["train"]),
      "--init_checkpoint=%s" % data["backbones"][workload.causal],
      "--backbone=nextitnet", "--method=peterrec",
      "--insertion=%s" % workload.insertion,
      "--train_batch_size=%d" % preset.finetune_batch,
      "--eval_every_steps=%d" % (10 * num_train_steps + 1000),
      "--export_task_patch=false"]


def user_environment():
  """os.environ without the benchmarks' own settings."""
  return {k: v for k, v in os.environ.items()
          if k not in BENCHMARK_ONLY_ENVIRONMENT}


def run(script, arguments, warmup_steps=1, timed_steps=1):
  """Runs `script` with `arguments` until its timed window has ended.

  Returns:
    dict: "started" (epoch seconds, just before the process was started),
    "phases" {name: epoch seconds at its end}, "window" {steps, seconds,
    other_cores, own_cores}.

  Raises:
    RuntimeError: the process ended without a window (its output's tail).
  """
  environment = user_environment()
  environment["PETERREC_BENCH_STEPS"] = "%d,%d" % (warmup_steps, timed_steps)
  started = time.time()
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.script_child", script] + arguments,
      cwd=PROJECT_ROOT, env=environment, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True, check=False)
  phases, window = {}, None
  for line in result.stdout.splitlines():
    if not line.startswith(script_child.MARK):
      continue
    kind, _, value = line[len(script_child.MARK):].partition(" ")
    if kind == "phase":
      name, _, stamp = value.rpartition(" ")
      phases[name] = float(stamp)
    elif kind == "window":
      window = json.loads(value)
  if window is None:
    raise RuntimeError("%s %s did not finish its timed window (exit %d):\n%s"
                       % (script, " ".join(arguments), result.returncode,
                          result.stdout[-3000:]))
  return {"started": started, "phases": phases, "window": window}
