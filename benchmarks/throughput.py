r"""Training throughput: the original feed_dict loop vs our Estimator pipeline.

For each workload (NextItNet and GRec pretraining, PeterRec serial and
parallel fine-tuning) on generated data of a preset's size, one run times,
interleaved and after warm-up, several repetitions of:

  (a) feed_dict  the original's way: numpy batches (and numpy negatives /
                 masks) fed every step, default session, to the model built
                 by `ops/` in the original's formulation
                 (`modeling.ORIGINAL_EXECUTION`: `atrous_conv2d`, moments
                 layer norm, ...; benchmarks/feed_dict_baseline.py);
  (b) the script what users run: `nextitnet_pretrain.py` /
                 `peterrec_finetune.py` started in a process of its own with
                 a user's flags and environment, over the TFRecords written
                 by `tfrecord_tools` (benchmarks/script_runs.py); its window
                 of steps is timed inside that process after warm-up;
  (c) input      the script's input_fn alone, no model;
  peak           a 2048x2048 float32 matmul, the machine's ceiling;

and prints medians: steps/s, sequences/s, positions/s, achieved GFLOP/s (an
analytic count of the model's matrix products, benchmarks/flops.py), the
ratios b/a, b/peak and c/b, and how much CPU other processes used during
the windows (a window where they used more than 5% of a core is flagged).

  .venv/bin/python -m benchmarks.throughput                 # demo size, ~4 min
  .venv/bin/python -m benchmarks.throughput --preset=paper  # 256 channels
  .venv/bin/python -m benchmarks.throughput --workloads=pretrain_nextitnet \
      --reps=5 --json_output=/tmp/throughput.json

The windows of one repetition run one after the other in a rotating order
(the benchmark process waits while the script runs). (a), (c) and the peak
run in this process with the thread pools they would have in a process of
their own: TF_OVERRIDE_GLOBAL_THREADPOOL=1 (set here, before TensorFlow is
imported, and removed from the script's environment) gives every session
its own intra-op pool, and (a) and the peak get inter-op pools of their own
with TF's defaults, as `tf.Session()` in the original has.
"""
import os
os.environ.setdefault("TF_OVERRIDE_GLOBAL_THREADPOOL", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import gc
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

import training_utils
from benchmarks import cpu_monitor
from benchmarks import feed_dict_baseline
from benchmarks import flops as flops_lib
from benchmarks import pipeline
from benchmarks import script_runs
from benchmarks import workloads

VARIANTS = ("a", "b", "c", "peak")
VARIANT_NAMES = {"a": "(a) feed_dict", "b": "(b) the script",
                 "c": "(c) input only", "peak": "matmul peak"}
PEAK_SIZE = 2048
PEAK_STEPS = 4

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_enum("preset", "demo", sorted(workloads.PRESETS),
                    "Sizes: demo (64 channels), paper (256 "
                    "channels), smoke (tiny, for the test).")
  flags.DEFINE_list("workloads", list(workloads.WORKLOADS),
                    "Which of %s to run." % ", ".join(workloads.WORKLOADS))
  flags.DEFINE_integer("reps", 3, "Timed repetitions of each variant.")
  flags.DEFINE_float("steps_scale", 1.0, "Multiplies the preset's timed "
                     "steps per window (e.g. 0.5 for a quicker run).")
  flags.DEFINE_string("work_dir", None, "Where the generated data and model "
                      "directories go (default: a temporary directory, "
                      "removed at the end).")
  flags.DEFINE_string("json_output", None, "Also write every window's "
                      "numbers to this JSON file.")


# ---------------------------------------------------------------------------
# Sizes of one step
# ---------------------------------------------------------------------------


def step_sizes(workload, preset, data):
  """(sequences, positions, training FLOPs) of one step of `workload`."""
  spec = workloads.workload(workload)
  blocks = len(preset.dilations)
  if spec.pretraining:
    seq_length = data["pretrain"]["seq_length"]
    count = flops_lib.pretrain_flops(
        spec.encoder, preset.pretrain_batch, seq_length, preset.channels,
        preset.kernel_size, blocks, preset.num_items,
        workloads.default_num_sampled(preset),
        num_predictions=workloads.num_predictions(preset),
        softmax=spec.softmax)
    length = seq_length - 1 if spec.causal else seq_length
    return preset.pretrain_batch, preset.pretrain_batch * length, count.train
  context = data["finetune"]["source_length"] + 1  # [source..., [CLS]]
  count = flops_lib.finetune_flops(
      preset.finetune_batch, context, preset.channels, preset.kernel_size,
      blocks, patch=spec.insertion)
  return (preset.finetune_batch, preset.finetune_batch * context,
          count.train)


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------


def _timed(runner, num_steps):
  gc.collect()  # garbage of earlier graphs: not inside the window
  window = cpu_monitor.CpuWindow().start()
  runner.run_steps(num_steps)
  window.stop()
  return window, num_steps


def _record(workload, variant, rep, window, steps):
  """One window's record; `window` a dict of CpuWindow's fields."""
  other = window["other_cores"]
  return {"workload": workload, "variant": variant, "rep": rep,
          "seconds": window["seconds"], "steps": steps,
          "steps_per_sec": steps / window["seconds"],
          "other_cores": other, "own_cores": window["own_cores"],
          "noisy": other is not None and
                   other > cpu_monitor.NOISY_OTHER_CORES}


def _script_window(workload, preset, data, work_dir, rep, warmup, steps):
  """(b): the script in a process of its own; returns (window, steps)."""
  spec = workloads.workload(workload)
  output_dir = os.path.join(work_dir, "b_%s_%d" % (workload, rep))
  shutil.rmtree(output_dir, ignore_errors=True)
  run = script_runs.run(
      script_runs.script_of(spec),
      script_runs.script_arguments(spec, preset, data, output_dir,
                                   num_train_steps=warmup + steps),
      warmup_steps=warmup, timed_steps=steps)
  shutil.rmtree(output_dir, ignore_errors=True)
  return run["window"]


def measure_workload(workload, preset, data, work_dir, reps, steps_scale,
                     peak):
  """Interleaved windows of a, b, c and the matmul peak for one workload."""
  pretraining = workloads.workload(workload).pretraining
  steps = preset.pretrain_steps if pretraining else preset.finetune_steps
  steps = [max(1, int(round(s * steps_scale))) for s in steps]
  warmup = preset.pretrain_warmup if pretraining else preset.finetune_warmup
  logging.info("%s: building (a) feed_dict loop", workload)
  loop = feed_dict_baseline.loop_for(workloads.workload(workload), preset,
                                     data)
  input_only = pipeline.InputOnly(
      pipeline.EstimatorTraining(workload, preset, data, work_dir).input_fn(),
      training_utils.session_config())
  loop.run_steps(warmup)
  input_only.run_steps(max(10, steps[2] // 10))
  records = []
  try:
    for rep in range(reps):
      order = ["a", "b", "c", "peak"]
      order = order[rep % 4:] + order[:rep % 4]  # no fixed neighbours
      for variant in order:
        if variant == "b":
          window = _script_window(workload, preset, data, work_dir, rep,
                                  warmup, steps[1])
          record = _record(workload, "b", rep, window, window["steps"])
        else:
          runner, count = {"a": (loop, steps[0]),
                           "c": (input_only, steps[2]),
                           "peak": (peak, PEAK_STEPS)}[variant]
          window, count = _timed(runner, count)
          record = _record(workload, variant, rep, vars(window), count)
        records.append(record)
        _log(record)
  finally:
    loop.close()
    input_only.close()
  return records


def _log(record):
  logging.info("%s %s rep %d: %.2f steps/s (other processes %.2f cores)",
               record["workload"], record["variant"], record["rep"],
               record["steps_per_sec"], record["other_cores"] or 0.0)


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


def summarize(records, preset, data):
  """Median rates per (workload, variant) and the ratios."""
  peak_rates = [r["steps_per_sec"] * flops_lib.matmul_flops(PEAK_SIZE) / 1e9
                for r in records if r["variant"] == "peak"]
  peak_gflops = max(peak_rates)
  rows, ratios = [], []
  workload_names = [w for w in workloads.WORKLOADS
                    if any(r["workload"] == w for r in records)]
  for workload in workload_names:
    sequences, positions, step_flops = step_sizes(workload, preset, data)
    medians = {}
    for variant in ("a", "b", "c"):
      mine = [r for r in records
              if r["workload"] == workload and r["variant"] == variant]
      rate = float(np.median([r["steps_per_sec"] for r in mine]))
      other = [r["other_cores"] for r in mine if r["other_cores"] is not None]
      medians[variant] = rate
      trains = variant != "c"
      gflops = rate * step_flops / 1e9 if trains else None
      rows.append({
          "workload": workload, "variant": VARIANT_NAMES[variant],
          "steps_per_sec": rate, "sequences_per_sec": rate * sequences,
          "positions_per_sec": rate * positions,
          "gflops_per_sec": gflops,
          "percent_of_peak": (100.0 * gflops / peak_gflops
                              if trains else None),
          "reps": len(mine),
          "cpu_ms_per_step": float(np.median(
              [1000 * r["own_cores"] * r["seconds"] / r["steps"]
               for r in mine if r["own_cores"] is not None] or [np.nan])),
          "max_other_cores": max(other) if other else None,
          "noisy_reps": sum(1 for r in mine if r["noisy"]),
          "per_rep": [round(r["steps_per_sec"], 3) for r in mine],
      })
    ratios.append({
        "workload": workload,
        "b_over_a": medians["b"] / medians["a"],
        "b_over_peak": medians["b"] * step_flops / 1e9 / peak_gflops,
        "c_over_b": medians["c"] / medians["b"],
        "step_gflop": step_flops / 1e9,
    })
  return {"peak_gflops": peak_gflops,
          "peak_gflops_median": float(np.median(peak_rates)),
          "rows": rows, "ratios": ratios}


def _fmt(value, digits=1):
  if value is None:
    return "-"
  if value >= 1000:
    return "{:,.0f}".format(value)
  return "%.*f" % (digits, value)


def format_tables(summary):
  lines = ["| workload | variant | steps/s | sequences/s | positions/s | "
           "GFLOP/s | % of peak | CPU ms/step | other CPU (max cores) | "
           "noisy reps |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for row in summary["rows"]:
    lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %d/%d |" % (
        row["workload"], row["variant"], _fmt(row["steps_per_sec"], 2),
        _fmt(row["sequences_per_sec"]), _fmt(row["positions_per_sec"]),
        _fmt(row["gflops_per_sec"]), _fmt(row["percent_of_peak"]),
        _fmt(row["cpu_ms_per_step"], 2), _fmt(row["max_other_cores"], 2),
        row["noisy_reps"], row["reps"]))
  lines.append("")
  lines.append("matmul peak (%dx%d float32, default threads, same run): "
               "%.1f GFLOP/s (best window; median %.1f)" % (
                   PEAK_SIZE, PEAK_SIZE, summary["peak_gflops"],
                   summary["peak_gflops_median"]))
  lines.append("")
  lines.append("| workload | GFLOP/step | b/a (speed-up over feed_dict) | "
               "b/peak | c/b (input headroom) |")
  lines.append("|---|---:|---:|---:|---:|")
  for ratio in summary["ratios"]:
    lines.append("| %s | %.3f | %.2fx | %.1f%% | %.1fx |" % (
        ratio["workload"], ratio["step_gflop"], ratio["b_over_a"],
        100 * ratio["b_over_peak"], ratio["c_over_b"]))
  return "\n".join(lines)


def _environment():
  commit = None
  try:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True,
        text=True, cwd=os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))), check=False).stdout.strip() or None
  except OSError:
    pass
  return {"tensorflow": tf.__version__, "python": platform.python_version(),
          "cpus": os.cpu_count(), "machine": platform.machine(),
          "git_commit": commit,
          "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
          "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def run(preset_name, workload_names, reps, steps_scale=1.0, work_dir=None):
  """Prepares the data, measures every workload; returns the results dict."""
  unknown = sorted(set(workload_names) - set(workloads.WORKLOADS))
  if unknown:
    raise ValueError("unknown workloads %s, expected some of %s" %
                     (unknown, workloads.WORKLOADS))
  preset = workloads.PRESETS[preset_name]
  # Before any other session: the Estimator's global inter-op pool.
  pipeline.pin_global_thread_pools(pipeline.EstimatorTraining(
      workload_names[0], preset, None, None).session_config())
  temporary = work_dir is None
  work_dir = work_dir or tempfile.mkdtemp(prefix="peterrec_bench_")
  started = time.time()
  try:
    logging.info("generating %s data in %s", preset_name, work_dir)
    data = workloads.prepare_data(preset, work_dir)
    peak = pipeline.MatmulPeak(PEAK_SIZE)
    peak.run_steps(1)
    records = []
    for workload in workload_names:
      records += measure_workload(workload, preset, data, work_dir, reps,
                                  steps_scale, peak)
    peak.close()
  finally:
    if temporary:
      shutil.rmtree(work_dir, ignore_errors=True)
  summary = summarize(records, preset, data)
  return {"preset": preset_name, "environment": _environment(),
          "seconds": time.time() - started, "summary": summary,
          "records": records}


def main(argv):
  del argv
  tf.compat.v1.disable_eager_execution()
  results = run(FLAGS.preset, FLAGS.workloads, FLAGS.reps, FLAGS.steps_scale,
                FLAGS.work_dir)
  env = results["environment"]
  print("\nPeterRec-TF training throughput, preset %s, %d reps, TF %s, %s "
        "CPUs, commit %s, %s (%.0f s)\n" % (
            results["preset"], FLAGS.reps, env["tensorflow"], env["cpus"],
            env["git_commit"], env["date"], results["seconds"]))
  print(format_tables(results["summary"]))
  sys.stdout.flush()
  if FLAGS.json_output:
    workloads.write_json(FLAGS.json_output, results)


if __name__ == "__main__":
  define_flags()
  app.run(main)
