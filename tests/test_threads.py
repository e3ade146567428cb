"""The scripts run on the thread pools their flags ask for.

Under TensorFlow 2 the sessions of tf.compat.v1 share the process-wide
pools, which `Estimator.train` creates at their default size (one thread
per core) before its session exists, unless the script sizes them first
(training_utils.set_process_threads). Read back after a real run, in a
fresh process."""
import json
import subprocess
import sys

from tests import conftest
from tests.test_reliability import ENV, finetune_world

_PROGRAM = """
import json, sys
import tensorflow as tf
import peterrec_finetune as ft
options = dict(ft.default_options(), data_dir=sys.argv[1],
               output_dir=sys.argv[2], method="peterzero", channels=8,
               dilations=["1", "2"], num_train_steps=2, train_batch_size=8,
               num_eval_negatives=9, intra_op_threads=1, inter_op_threads=3)
ft.run(options)
threading = tf.config.threading
print("THREADS " + json.dumps([threading.get_intra_op_parallelism_threads(),
                               threading.get_inter_op_parallelism_threads()]))
"""


def test_finetuning_runs_on_the_thread_pools_it_asks_for(tmp_path):
  data_dir = finetune_world(str(tmp_path))
  result = subprocess.run(
      [sys.executable, "-c", _PROGRAM, data_dir, str(tmp_path / "out")],
      cwd=conftest.PROJECT_ROOT, env=ENV, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-3000:]
  line = [l for l in result.stdout.splitlines() if l.startswith("THREADS ")]
  assert json.loads(line[0][len("THREADS "):]) == [1, 3]
