r"""Where the time of one training step goes, by kind of op.

Traces a few steps (`RunOptions.FULL_TRACE`) of an `ablation.py` variant
after warm-up and sums the ops' execution times by op type (as executed,
after TensorFlow's graph rewrites, e.g. oneDNN's `_MklMatMul`) and by
category: matrix products, convolutions and space-to-batch reshapes,
optimizer updates, input pipeline, everything else (elementwise, reductions,
gathers, copies). Op times overlap on 2 cores and tracing adds overhead, so
read the shares, not the absolute times.

  .venv/bin/python -m benchmarks.profile_step --workload=pretrain_nextitnet \
      --variants=original_graph,script_session --preset=paper
"""
import os
os.environ.setdefault("TF_OVERRIDE_GLOBAL_THREADPOOL", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # a profiler line per step

# pylint: disable=g-import-not-at-top,wrong-import-position
import collections
import re
import shutil
import tempfile

from absl import app
from absl import flags
import tensorflow as tf

from benchmarks import ablation
from benchmarks import pipeline
from benchmarks import workloads

FLAGS = flags.FLAGS

# Categories, first match wins (op types as executed).
CATEGORIES = (
    ("matmul", re.compile(r"MatMul|Einsum")),
    ("conv / space-to-batch", re.compile(
        r"Conv2D|Conv3D|SpaceToBatch|BatchToSpace")),
    ("optimizer", re.compile(r"^(Resource)?Apply|ScatterAdd|ScatterSub")),
    ("input pipeline", re.compile(r"Iterator|Dataset")),
)


def op_type(node_stats):
  """The executed op type from a NodeExecStats' timeline label."""
  label = node_stats.timeline_label
  if " = " in label:
    return label.split(" = ", 1)[1].split("(", 1)[0]
  return node_stats.node_name.split(":")[0]


def category(type_name):
  for name, pattern in CATEGORIES:
    if pattern.search(type_name):
      return name
  return "other"


def op_times(traces):
  """{op type: total microseconds} over the traces' compute devices."""
  totals = collections.Counter()
  for metadata in traces:
    for device in metadata.step_stats.dev_stats:
      if "/device:CPU" not in device.device or "stream" in device.device:
        continue
      for node in device.node_stats:
        if node.node_name in ("_SOURCE", "_SINK"):
          continue
        totals[op_type(node)] += node.op_end_rel_micros
  return totals


def format_profile(name, totals, num_steps, top=12):
  total = float(sum(totals.values())) or 1.0
  by_category = collections.Counter()
  for type_name, micros in totals.items():
    by_category[category(type_name)] += micros
  lines = ["%s: %.1f ms of op time per step" % (name, total / 1000 /
                                                 num_steps),
           "", "| category | ms/step | share |", "|---|---:|---:|"]
  for cat, micros in by_category.most_common():
    lines.append("| %s | %.2f | %.0f%% |" % (cat, micros / 1000 / num_steps,
                                             100 * micros / total))
  lines += ["", "| op type | ms/step | share |", "|---|---:|---:|"]
  for type_name, micros in totals.most_common(top):
    lines.append("| %s | %.2f | %.0f%% |" % (
        type_name, micros / 1000 / num_steps, 100 * micros / total))
  return "\n".join(lines)


def define_flags():
  flags.DEFINE_enum("workload", "pretrain_nextitnet", list(workloads.WORKLOADS),
                    "Which training step.")
  flags.DEFINE_enum("preset", "demo", sorted(workloads.PRESETS), "Sizes.")
  flags.DEFINE_list("variants", ["original_graph", "script_session"],
                    "ablation.py variants to trace (not feed_dict/estimator).")
  flags.DEFINE_integer("warmup", 20, "Untraced steps first.")
  flags.DEFINE_integer("steps", 10, "Traced steps.")


def main(argv):
  del argv
  tf.compat.v1.disable_eager_execution()
  bad = [v for v in FLAGS.variants
         if v not in ablation.VARIANTS or v in ("feed_dict", "estimator")]
  if bad:
    raise app.UsageError("cannot trace variants %s" % bad)
  preset = workloads.PRESETS[FLAGS.preset]
  work_dir = tempfile.mkdtemp(prefix="peterrec_profile_")
  pipeline.pin_global_thread_pools(pipeline.EstimatorTraining(
      FLAGS.workload, preset, None, None).session_config())
  try:
    data = workloads.prepare_data(preset, work_dir)
    for name in FLAGS.variants:
      runner = ablation.build_variant(name, FLAGS.workload, preset, data,
                                      work_dir)
      try:
        runner.run_steps(FLAGS.warmup)
        totals = op_times(runner.trace_steps(FLAGS.steps))
      finally:
        runner.close()
      print("\n" + format_profile("%s, %s, preset %s" % (
          FLAGS.workload, name, FLAGS.preset), totals, FLAGS.steps))
  finally:
    shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
