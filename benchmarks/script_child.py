r"""A training script run as its `__main__` block runs it, with a stopwatch.

  python -m benchmarks.script_child <script module> [the script's flags...]

does what `python <script>.py [flags...]` does -- `define_flags()` then
`app.run(main)`, with the script's own flags, defaults and environment --
plus two hooks added to its `Estimator.train` (the first and the last of the
hooks it passes) that print lines "PETERREC_BENCH <name> <value>":

  phase <name> <epoch seconds>  the end of each start-up phase (see
                                benchmarks/startup.py for the phases);
  window <json>                 one timed window of training steps.

PETERREC_BENCH_STEPS="<warm-up steps>,<timed steps>" (default "1,1") sets
the window: after the warm-up steps, the next timed steps are measured with
cpu_monitor.CpuWindow (wall time, this process's CPU, the CPU every other
process used meanwhile), then the process ends at once (os._exit: no final
checkpoint or evaluation). The hooks do nothing else per step: a counter.
"""
import importlib
import json
import os
import sys
import time

MARK = "PETERREC_BENCH "


def _print(name, value):
  print("%s%s %s" % (MARK, name, value), flush=True)


def _phase(name):
  _print("phase", "%s %.6f" % (name, time.time()))


def main():
  _phase("imports-start")
  # pylint: disable=g-import-not-at-top
  from absl import app
  import tensorflow as tf
  from benchmarks import cpu_monitor
  script = importlib.import_module(sys.argv[1])
  _phase("imports")
  warmup, timed = (int(v) for v in os.environ.get(
      "PETERREC_BENCH_STEPS", "1,1").split(","))

  class FirstHook(tf.estimator.SessionRunHook):
    """The first hook: the graph is built; the session exists."""

    def begin(self):
      _phase("graph")

    def after_create_session(self, session, coord):
      _phase("session")

    def before_run(self, run_context):
      if not hasattr(self, "stepping"):
        self.stepping = True
        _phase("step-0 checkpoint")

  class LastHook(tf.estimator.SessionRunHook):
    """The last hook: the script's hooks have started; counts the steps."""

    steps = 0
    window = None

    def begin(self):
      _phase("hooks' graphs")

    def after_create_session(self, session, coord):
      _phase("step-0 validation")
      if warmup == 0:
        self.window = cpu_monitor.CpuWindow().start()

    def after_run(self, run_context, run_values):
      self.steps += 1
      if self.steps <= 2:
        _phase("step %d" % self.steps)
      if self.steps == warmup:
        self.window = cpu_monitor.CpuWindow().start()
      elif self.steps == warmup + timed:
        window = self.window.stop()
        _print("window", json.dumps({
            "steps": timed, "seconds": window.seconds,
            "other_cores": window.other_cores,
            "own_cores": window.own_cores}))
        os._exit(0)  # pylint: disable=protected-access

  train = tf.estimator.Estimator.train

  def train_with_stopwatch(self, input_fn, hooks=None, **kwargs):
    _phase("setup")
    return train(self, input_fn,
                 hooks=[FirstHook()] + list(hooks or []) + [LastHook()],
                 **kwargs)

  tf.estimator.Estimator.train = train_with_stopwatch
  script.define_flags()
  app.run(script.main, argv=[sys.argv[1]] + sys.argv[2:])


if __name__ == "__main__":
  main()
