r"""Every benchmark users wait on, one after the other: `bash run.sh bench`.

  1. benchmarks.throughput       training: the scripts as users run them vs
                                 the original's feed_dict loop, per workload;
  2. benchmarks.evaluation       whole-split evaluation vs the feed_dict way;
  3. benchmarks.serving_latency  one user's latency (p50, p99) and batch-256
                                 throughput of the exported SavedModel;
  4. benchmarks.startup          process start to the first training steps.

Each runs in a process of its own (each sets its own thread pools before
TensorFlow starts) on the generated data of the same preset, and prints its
tables as it finishes; the JSON of all four goes to --json_output.

  bash run.sh bench                      # demo size
  bash run.sh bench --preset=paper       # 256 channels
  bash run.sh bench --only=throughput,startup
"""
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from benchmarks import workloads

BENCHMARKS = ("throughput", "evaluation", "serving_latency", "startup")
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_enum("preset", "demo", sorted(workloads.PRESETS),
                    "Sizes (benchmarks/workloads.py).")
  flags.DEFINE_list("only", list(BENCHMARKS),
                    "Which of %s to run." % ", ".join(BENCHMARKS))
  flags.DEFINE_integer("reps", 3, "Repetitions of every timed window.")
  flags.DEFINE_string("json_output", None,
                      "Write every benchmark's results to this JSON file.")


def run_benchmark(name, preset, reps, json_path):
  """Runs benchmarks.<name> in a process of its own; returns its seconds."""
  started = time.time()
  subprocess.run([sys.executable, "-m", "benchmarks." + name,
                  "--preset=%s" % preset, "--reps=%d" % reps,
                  "--json_output=%s" % json_path],
                 cwd=PROJECT_ROOT, check=True)
  return time.time() - started


def main(argv):
  del argv
  unknown = sorted(set(FLAGS.only) - set(BENCHMARKS))
  if unknown:
    raise app.UsageError("unknown benchmarks %s, expected some of %s" %
                         (unknown, BENCHMARKS))
  results = {"preset": FLAGS.preset, "seconds": {}}
  with tempfile.TemporaryDirectory(prefix="peterrec_suite_") as directory:
    for name in [b for b in BENCHMARKS if b in FLAGS.only]:
      path = os.path.join(directory, name + ".json")
      results["seconds"][name] = run_benchmark(name, FLAGS.preset, FLAGS.reps,
                                               path)
      with open(path) as f:
        results[name] = json.load(f)
  print("\nbenchmarks of preset %s: %s" % (FLAGS.preset, ", ".join(
      "%s %.0f s" % item for item in results["seconds"].items())))
  if FLAGS.json_output:
    workloads.write_json(FLAGS.json_output, results)


if __name__ == "__main__":
  define_flags()
  app.run(main)
