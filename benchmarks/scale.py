r"""The scale curve: streaming conversion of 1, 3 and 10 million users, and
training steps/s on the local cluster against one process.

Conversion: a synthetic pretraining log per size (one line per user,
`--length` items drawn from a Zipf distribution over `--num_items` items),
converted by `python -m tfrecord_tools.convert_csv --split_method=hash` as a
user runs it, in a process of its own. Reported per size: wall time, lines
per second, and the peak memory of the converter's whole process tree
(its own process and its worker processes: the proportional set sizes
summed, sampled from /proc every 0.1 s) and the peak resident set of its
largest process.

Training (`--training`): `nextitnet_pretrain.py` on the smallest size's
dataset (64 channels, batch 32, sampled softmax with 1,000 negatives), as
one process and as a local cluster (`distributed.local_cluster`: two ps
holding the item tables in two partitions, a chief, and 0 or 1 more
workers, i.e. 1 or 2 trainers), each for `--train_steps` global steps;
steps/s is the median of the rates each trainer logs over the second half
of its steps, summed over the trainers, and the last loss each logged is
kept. On a 2-core machine the cluster's processes share the same two
cores, so this measures correctness and overhead, not speed-up.

  .venv/bin/python -m benchmarks.scale --work_dir=/tmp/scale   # ~30 min
  .venv/bin/python -m benchmarks.scale --sizes=1000000 --training
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_list("sizes", ["1000000", "3000000", "10000000"],
                    "Numbers of users (lines) to convert.")
  flags.DEFINE_integer("num_items", 1000000, "Distinct items of the "
                       "generated logs (Zipf-distributed).")
  flags.DEFINE_integer("length", 50, "Items per line.")
  flags.DEFINE_float("zipf_exponent", 1.0, "Exponent s: P(rank k) ~ k^-s.")
  flags.DEFINE_integer("num_shards", 16, "The converter's --num_shards (files "
                       "per split).")
  flags.DEFINE_integer("num_workers", 0, "The converter's --num_workers (0: "
                       "its default).")
  flags.DEFINE_string("work_dir", None, "Keep the generated logs here "
                      "(reused when present); default: a temporary folder.")
  flags.DEFINE_bool("training", False, "Also time training on the cluster.")
  flags.DEFINE_integer("train_steps", 200, "Global steps of each training.")
  flags.DEFINE_string("json_output", None, "Write the figures here.")


def write_log(path, num_users, num_items, length, exponent, seed=1):
  """A pretraining CSV: `num_users` lines of `length` Zipf-drawn items."""
  rng = np.random.default_rng(seed)
  probabilities = 1.0 / np.arange(1, num_items + 1) ** exponent
  cumulative = np.cumsum(probabilities / probabilities.sum())
  # Item names in a random order of popularity, so that id order and
  # popularity are unrelated, as in a real log.
  names = np.array([str(i) for i in rng.permutation(num_items) + 1])
  temporary = path + ".tmp"
  with open(temporary, "w") as f:
    for start in range(0, num_users, 100000):
      count = min(100000, num_users - start)
      ranks = np.searchsorted(cumulative, rng.random((count, length)))
      rows = names[np.minimum(ranks, num_items - 1)]
      f.write("\n".join(map(",".join, rows.tolist())) + "\n")
  os.rename(temporary, path)
  return path


def _tree_memory(pid):
  """(proportional set size summed, largest resident set) in bytes of `pid`
  and its descendants. PSS shares each shared page (TensorFlow's libraries
  in every worker) among the processes mapping it, so the sum is the
  memory the tree holds."""
  children = {}
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open("/proc/%s/stat" % entry) as f:
          parent = int(f.read().rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
      except (OSError, IndexError, ValueError):
        continue
  total, largest, todo = 0, 0, [pid]
  while todo:
    current = todo.pop()
    todo.extend(children.get(current, []))
    try:
      with open("/proc/%d/smaps_rollup" % current) as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
      continue
    total += int(fields.get("Pss", "0 kB").split()[0]) * 1024
    largest = max(largest, int(fields.get("Rss", "0 kB").split()[0]) * 1024)
  return total, largest


def run_measured(command, log_path, env=None):
  """Runs `command`; (wall seconds, peak PSS of the process tree, peak RSS
  of its largest process)."""
  with open(log_path, "w") as log:
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=log,
                               stderr=subprocess.STDOUT, env=env)
    peak_total = peak_one = 0
    while process.poll() is None:
      total, one = _tree_memory(process.pid)
      peak_total, peak_one = max(peak_total, total), max(peak_one, one)
      time.sleep(0.1)
    seconds = time.perf_counter() - started
  if process.returncode != 0:
    with open(log_path) as f:
      raise RuntimeError("%s failed:\n%s" % (" ".join(command),
                                             f.read()[-3000:]))
  return seconds, peak_total, peak_one


def measure_conversion(work_dir, num_users):
  csv = os.path.join(work_dir, "log_%d.csv" % num_users)
  if not os.path.exists(csv):
    started = time.time()
    write_log(csv, num_users, FLAGS.num_items, FLAGS.length,
              FLAGS.zipf_exponent)
    print("generated %s (%.1f GB) in %.0f s" % (
        csv, os.path.getsize(csv) / 1e9, time.time() - started), flush=True)
  output_dir = os.path.join(work_dir, "data_%d" % num_users)
  shutil.rmtree(output_dir, ignore_errors=True)
  seconds, peak_total, peak_one = run_measured(
      [sys.executable, "-m", "tfrecord_tools.convert_csv", "--kind=pretrain",
       "--input_csv=" + csv, "--output_dir=" + output_dir,
       "--split_method=hash", "--num_shards=%d" % FLAGS.num_shards,
       "--num_workers=%d" % FLAGS.num_workers, "--test_fraction=0.01"],
      os.path.join(work_dir, "convert_%d.log" % num_users))
  with open(os.path.join(output_dir, "metadata.json")) as f:
    metadata = json.load(f)
  record = {"users": num_users, "csv_bytes": os.path.getsize(csv),
            "seconds": round(seconds, 1),
            "lines_per_sec": round(num_users / seconds),
            "peak_pss_tree_mb": round(peak_total / 2**20),
            "peak_rss_process_mb": round(peak_one / 2**20),
            "item_vocab_size": metadata["item_vocab_size"],
            "num_train": metadata["num_train"],
            "num_test": metadata["num_test"]}
  print(json.dumps(record), flush=True)
  return record


_RATE = re.compile(r"step (\d+)/\d+ \(\d+%\): loss \S+, ([\d.]+) steps/s")


def _last_loss(log_path):
  with open(log_path) as f:
    losses = re.findall(r"\): loss (\S+),", f.read())
  return float(losses[-1]) if losses else float("nan")


def _median_rate(log_path, total_steps):
  with open(log_path) as f:
    rates = [float(m.group(2)) for m in _RATE.finditer(f.read())
             if int(m.group(1)) > total_steps // 2]
  return statistics.median(rates) if rates else float("nan")


def measure_training(work_dir, data_dir):
  """Steps/s of one process and of the cluster with 1 and 2 trainers.

  The cluster runs split the item tables over its 2 ps tasks
  (--num_embedding_partitions=2, which also makes their gradients sparse,
  so a step moves only the rows it touches); one process runs with and
  without that option, for a like-for-like reference.
  """
  # One checkpoint at the end (and step 0's); the cluster's evaluator
  # evaluates each as soon as it appears.
  model_args = ["--channels=64", "--train_batch_size=32",
                "--softmax=sampled", "--num_sampled=1000",
                "--save_checkpoints_steps=100000",
                "--log_step_count_steps=20", "--eval_throttle_secs=1"]
  partitioned = ["--num_embedding_partitions=2"]
  steps = FLAGS.train_steps
  runs = [("one process", [], None),
          ("one process, 2 table partitions", partitioned, None),
          ("cluster: 2 ps, 1 trainer", partitioned, 0),
          ("cluster: 2 ps, 2 trainers", partitioned, 1)]
  records = []
  for n, (setup, extra, num_workers) in enumerate(runs):
    out = os.path.join(work_dir, "train_%d" % n)
    shutil.rmtree(out, ignore_errors=True)
    log = os.path.join(work_dir, "train_%d.log" % n)
    if num_workers is None:
      command = [sys.executable, "nextitnet_pretrain.py",
                 "--data_dir=" + data_dir, "--output_dir=" + out,
                 "--num_train_steps=%d" % steps, "--do_eval=false"]
      chief_log = log
    else:
      command = [sys.executable, "-m", "distributed.local_cluster",
                 "--data_dir=" + data_dir, "--output_dir=" + out,
                 "--num_train_steps=%d" % steps,
                 "--num_workers=%d" % num_workers, "--num_ps=2",
                 "--timeout=3000", "--"]
    seconds, peak, _ = run_measured(command + model_args + extra, log)
    # Each trainer logs the rate of its own steps: the cluster's global
    # rate is their sum.
    trainer_logs = [log] if num_workers is None else [
        os.path.join(out, "cluster_logs", name) for name in
        ["chief_0.log"] + ["worker_%d.log" % i for i in range(num_workers)]]
    records.append({"setup": setup, "steps_per_sec": round(sum(
        _median_rate(path, steps // len(trainer_logs))
        for path in trainer_logs), 2), "seconds": round(seconds, 1),
                    "peak_pss_tree_mb": round(peak / 2**20),
                    "last_losses": [_last_loss(path) for path in
                                    trainer_logs]})
    print(json.dumps(records[-1]), flush=True)
  return records


def main(argv):
  del argv
  work_dir = FLAGS.work_dir or tempfile.mkdtemp(prefix="peterrec-scale-")
  os.makedirs(work_dir, exist_ok=True)
  conversions = [measure_conversion(work_dir, int(n)) for n in FLAGS.sizes]
  print("\n| users | CSV | wall time | lines/s | peak memory, all processes "
        "(PSS) | peak RSS, largest process | item ids |\n|---:|---:|---:|"
        "---:|---:|---:|---:|")
  for r in conversions:
    print("| %s | %.2f GB | %.0f s | %s | %s MB | %s MB | %s |" % (
        "{:,}".format(r["users"]), r["csv_bytes"] / 1e9, r["seconds"],
        "{:,}".format(r["lines_per_sec"]), "{:,}".format(
            r["peak_pss_tree_mb"]), "{:,}".format(r["peak_rss_process_mb"]),
        "{:,}".format(r["item_vocab_size"])))
  training = []
  if FLAGS.training:
    smallest = min(int(n) for n in FLAGS.sizes)
    training = measure_training(work_dir,
                                os.path.join(work_dir, "data_%d" % smallest))
    print("\n| setup | steps/s (batch 32) | wall time | peak memory "
          "(PSS) |\n|---|---:|---:|---:|")
    for r in training:
      print("| %s | %.2f | %.0f s | %s MB |" % (
          r["setup"], r["steps_per_sec"], r["seconds"],
          "{:,}".format(r["peak_pss_tree_mb"])))
  if FLAGS.json_output:
    with open(FLAGS.json_output, "w") as f:
      json.dump({"conversions": conversions, "training": training,
                 "num_items": FLAGS.num_items, "length": FLAGS.length,
                 "zipf_exponent": FLAGS.zipf_exponent}, f, indent=1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
