r"""Start-up: from process start to the first training steps of both scripts.

Each script runs in a process of its own, started as a user starts it
(`python nextitnet_pretrain.py --...`, `python peterrec_finetune.py --...`)
on the generated data of a preset (benchmarks/workloads.py; the demo size by
default), with one addition: a hook that prints when each phase ends, read
against this process's clock. The phases:

  imports        Python start to the script's module imported (TensorFlow's
                 import is most of it);
  setup          flags, metadata, the plan of rows, up to Estimator.train;
  graph          input_fn and model_fn;
  hooks' graphs  the hooks' set-up (fine-tuning's validation graph);
  session        the session: initializers, restoring the backbone;
  step-0 validation  the script's hooks start: fine-tuning validates once
                 before training (the first point of its curve);
  step-0 checkpoint  the Estimator's hooks start (it saves step 0);
  step 1, 2      the first two training steps (each new set of fetched
                 tensors makes TensorFlow prune and optimise the graph).

The figure users wait for is "to step 1 done", median over --reps runs.

  .venv/bin/python -m benchmarks.startup                 # demo size, ~2 min
  .venv/bin/python -m benchmarks.startup --preset=paper --reps=3
"""
import os
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

from benchmarks import workloads

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("imports", "setup", "graph", "hooks' graphs", "session",
          "step-0 validation", "step-0 checkpoint", "step 1", "step 2")
SCRIPTS = ("nextitnet_pretrain", "peterrec_finetune")
MARK = "STARTUP_PHASE "

# Runs in the child: the script as its __main__ block runs it, plus a hook
# that prints the end of each phase as seconds since the epoch.
_CHILD = r"""
import sys, time
print("%(mark)simports-start %%.6f" %% time.time(), flush=True)
import importlib
from absl import app
import tensorflow as tf
script = importlib.import_module(sys.argv[1])

def mark(name):
  print("%(mark)s%%s %%.6f" %% (name, time.time()), flush=True)

mark("imports")

class FirstHook(tf.estimator.SessionRunHook):
  # First of the hooks: the graph is built, the session exists.
  def begin(self):
    mark("graph")
  def after_create_session(self, session, coord):
    mark("session")
  def before_run(self, run_context):
    if not hasattr(self, "stepping"):
      self.stepping = True
      mark("step-0 checkpoint")

class LastHook(tf.estimator.SessionRunHook):
  # Last of the script's hooks: theirs have started; counts the steps.
  steps = 0
  def begin(self):
    mark("hooks' graphs")
  def after_create_session(self, session, coord):
    mark("step-0 validation")
  def after_run(self, run_context, run_values):
    self.steps += 1
    mark("step %%d" %% self.steps)
    if self.steps == 2:
      import os
      os._exit(0)

train = tf.estimator.Estimator.train
def train_with_phases(self, input_fn, hooks=None, **kwargs):
  mark("setup")
  return train(self, input_fn,
               hooks=[FirstHook()] + list(hooks or []) + [LastHook()],
               **kwargs)
tf.estimator.Estimator.train = train_with_phases
script.define_flags()
app.run(script.main, argv=[sys.argv[1]] + sys.argv[2:])
""" % {"mark": MARK}

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_enum("preset", "demo", sorted(workloads.PRESETS),
                    "Sizes (benchmarks/workloads.py).")
  flags.DEFINE_integer("reps", 3, "Runs of each script.")
  flags.DEFINE_list("scripts", list(SCRIPTS), "Which scripts.")
  flags.DEFINE_string("work_dir", None, "Keep the generated data here.")
  flags.DEFINE_string("json_output", None, "Write every run's phases here.")


def script_arguments(script, preset, data, output_dir):
  """The command-line flags a user would give the script at `preset`."""
  common = ["--output_dir=%s" % output_dir, "--num_train_steps=1000",
            "--log_step_count_steps=1000", "--save_summary_steps=1000"]
  if script == "nextitnet_pretrain":
    return common + [
        "--data_dir=%s" % os.path.dirname(data["pretrain"]["paths"]["train"]),
        "--channels=%d" % preset.channels,
        "--dilations=%s" % ",".join(map(str, preset.dilations)),
        "--kernel_size=%d" % preset.kernel_size, "--softmax=sampled",
        "--num_sampled=%d" % workloads.default_num_sampled(preset),
        "--train_batch_size=%d" % preset.pretrain_batch]
  return common + [
      "--data_dir=%s" % os.path.dirname(data["finetune"]["paths"]["train"]),
      "--init_checkpoint=%s" % data["backbones"][True],
      "--backbone=nextitnet", "--method=peterrec",
      "--train_batch_size=%d" % preset.finetune_batch,
      "--eval_every_steps=1000"]


def time_one_start(script, arguments):
  """{phase: seconds it took} of one process, and "to step 1", "to step 2"."""
  started = time.time()
  result = subprocess.run(
      [sys.executable, "-c", _CHILD, script] + arguments, cwd=PROJECT_ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      check=False)
  marks = {}
  for line in result.stdout.splitlines():
    if line.startswith(MARK):
      name, _, stamp = line[len(MARK):].rpartition(" ")
      marks[name] = float(stamp)
  if "step 2" not in marks:
    raise RuntimeError("%s did not reach step 2:\n%s" %
                       (script, result.stdout[-3000:]))
  times, previous = {"interpreter": marks["imports-start"] - started}, None
  previous = marks["imports-start"]
  for phase in PHASES:
    times[phase] = marks[phase] - previous
    previous = marks[phase]
  times["to step 1"] = marks["step 1"] - started
  times["to step 2"] = marks["step 2"] - started
  return times


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
  runs = {script: [] for script in FLAGS.scripts}
  with workloads.generated_data(preset, FLAGS.work_dir) as (data, work_dir):
    for rep in range(FLAGS.reps):
      for script in FLAGS.scripts:  # interleaved
        output_dir = os.path.join(work_dir, "out_%s_%d" % (script, rep))
        runs[script].append(time_one_start(
            script, script_arguments(script, preset, data, output_dir)))
  workloads.report(
      "Start-up, preset %s: seconds from process start, median [min-max] of "
      "%d runs" % (FLAGS.preset, FLAGS.reps), format_table(runs),
      FLAGS.json_output, {"preset": FLAGS.preset, "runs": runs})


if __name__ == "__main__":
  define_flags()
  app.run(main)
