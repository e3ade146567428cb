r"""Start-up: from process start to the first training steps of both scripts.

Each script runs in a process of its own, started as a user starts it
(`python nextitnet_pretrain.py --...`, `python peterrec_finetune.py --...`,
with the flags of benchmarks/script_runs.py and otherwise the defaults)
on the generated data of a preset (benchmarks/workloads.py; the demo size by
default), with one addition: a hook that prints when each phase ends, read
against this process's clock (benchmarks/script_child.py). The phases:

  imports        Python start to the script's module imported (TensorFlow's
                 import is most of it);
  setup          flags, metadata, the plan of rows, up to Estimator.train;
  graph          input_fn and model_fn;
  hooks' graphs  the hooks' set-up (fine-tuning's validation graph);
  session        the session: initializers, restoring the backbone;
  step-0 validation  the script's hooks start (fine-tuning validates the
                 restored model here with --validate_at_start, off by
                 default);
  step-0 checkpoint  the Estimator's hooks start (it saves step 0);
  step 1, 2      the first two training steps (each new set of fetched
                 tensors makes TensorFlow prune and optimise the graph).

The figure users wait for is "to step 1 done", median over --reps runs.

  .venv/bin/python -m benchmarks.startup                 # demo size, ~2 min
  .venv/bin/python -m benchmarks.startup --preset=paper --reps=3
"""
import os
import statistics
import time

from absl import app
from absl import flags

from benchmarks import script_runs
from benchmarks import workloads

PHASES = ("imports", "setup", "graph", "hooks' graphs", "session",
          "step-0 validation", "step-0 checkpoint", "step 1", "step 2")
# The script each workload starts.
SCRIPT_WORKLOADS = {"nextitnet_pretrain": "pretrain_nextitnet",
                    "peterrec_finetune": "finetune_serial"}
SCRIPTS = tuple(SCRIPT_WORKLOADS)

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_enum("preset", "demo", sorted(workloads.PRESETS),
                    "Sizes (benchmarks/workloads.py).")
  flags.DEFINE_integer("reps", 3, "Runs of each script.")
  flags.DEFINE_list("scripts", list(SCRIPTS), "Which scripts.")
  flags.DEFINE_string("work_dir", None, "Keep the generated data here.")
  flags.DEFINE_string("json_output", None, "Write every run's phases here.")


def time_one_start(script, preset, data, output_dir):
  """{phase: seconds it took} of one process, and "to step 1", "to step 2"."""
  workload = workloads.workload(SCRIPT_WORKLOADS[script])
  run = script_runs.run(script, script_runs.script_arguments(
      workload, preset, data, output_dir, num_train_steps=1000),
                        warmup_steps=1, timed_steps=1)
  marks, started = run["phases"], run["started"]
  times = {"interpreter": marks["imports-start"] - started}
  previous = marks["imports-start"]
  for phase in PHASES:
    times[phase] = marks[phase] - previous
    previous = marks[phase]
  times["to step 1"] = marks["step 1"] - started
  times["to step 2"] = marks["step 2"] - started
  return times


def measure(preset, data, work_dir, scripts=SCRIPTS, reps=3):
  """{script: [phase times of each run]}, the scripts' runs interleaved."""
  runs = {script: [] for script in scripts}
  for rep in range(reps):
    for script in scripts:
      output_dir = os.path.join(work_dir, "startup_%s_%d_%d" % (
          script, rep, int(time.time() * 1000)))
      runs[script].append(time_one_start(script, preset, data, output_dir))
  return runs


def format_table(runs):
  """Median seconds per phase, a column per script."""
  scripts = list(runs)
  rows = ["| phase | " + " | ".join(scripts) + " |",
          "|---|" + "---:|" * len(scripts)]
  for phase in ("interpreter",) + PHASES + ("to step 1", "to step 2"):
    cells = []
    for script in scripts:
      values = [r[phase] for r in runs[script]]
      cells.append("%.2f [%.2f-%.2f]" % (statistics.median(values),
                                         min(values), max(values)))
    name = "**%s**" % phase if phase.startswith("to ") else phase
    rows.append("| %s | %s |" % (name, " | ".join(cells)))
  return "\n".join(rows)


def main(argv):
  del argv
  preset = workloads.PRESETS[FLAGS.preset]
  with workloads.generated_data(preset, FLAGS.work_dir) as (data, work_dir):
    runs = measure(preset, data, work_dir, FLAGS.scripts, FLAGS.reps)
  workloads.report(
      "Start-up, preset %s: seconds from process start, median [min-max] of "
      "%d runs" % (FLAGS.preset, FLAGS.reps), format_table(runs),
      FLAGS.json_output, {"preset": FLAGS.preset, "runs": runs})


if __name__ == "__main__":
  define_flags()
  app.run(main)
