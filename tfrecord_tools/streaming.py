"""Streaming conversion: two passes over the CSV, memory bound by the vocabulary.

`convert_csv --split_method=hash` comes here. The whole-file converter
(`--split_method=permutation`, the original's seeded permutation) holds
every line in memory; this one never holds more than one line of the input:

* pass 1 (count) parses and checks every line and counts the items (and
  the targets) in order of first appearance, the lengths and the lines;
* the vocabularies are fitted on those counts, exactly as
  `data_loader.Vocabulary.fit` would on the whole file;
* pass 2 (write) parses each line again, maps it to ids and writes its
  examples to shard `line % num_shards` of the split that `split_unit`, a
  seeded hash of the line's index (or of (line, target) for a fine-tuning
  row split), decides: test when the hash is below `test_fraction`.

Peak memory is the vocabularies' (a few hundred bytes per distinct item),
whatever the number of lines. Each pass runs in `num_workers` processes:
worker w of W parses the lines i with i % W == w (pass 1) or whose shard
has (i % num_shards) % W == w (pass 2); every worker reads the whole input
and skips the other lines unparsed, which costs little beside parsing. The
result does not depend on the number of workers.

Example order differs from the permutation converter's: each shard holds
its lines in file order (the training input shuffles). The test split holds
about, not exactly, `test_fraction` of the lines.
"""
import collections
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time

from absl import logging
import numpy as np
import tensorflow as tf

import data_loader
from tfrecord_tools import common

_MASK64 = (1 << 64) - 1
_POLL_SECONDS = 0.5


def _mix64(value):
  """splitmix64's finaliser: a bijection of 64-bit ints that mixes all bits."""
  value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
  value = (value ^ (value >> 27)) * 0x94D049BB133111EB & _MASK64
  return value ^ (value >> 31)


def split_unit(seed, *keys):
  """A number in [0, 1) fixed by `seed` and the int `keys`, uniform over keys.

  The streaming split puts a line (a user) in the test split when
  `split_unit(seed, line) < test_fraction`; a fine-tuning row split keys
  each (user, target) row by `split_unit(seed, line, target_position)`.
  """
  value = _mix64((seed * 0x9E3779B97F4A7C15 + 1) & _MASK64)
  for key in keys:
    value = _mix64((value ^ (key + 0x9E3779B97F4A7C15)) & _MASK64)
  return (value >> 11) / float(1 << 53)


# ---------------------------------------------------------------------------
# Reading: every worker reads every line and parses its own
# ---------------------------------------------------------------------------


class _Progress(object):
  """Where a worker is (bytes read, lines read): logged, or written to its
  row of the main process's progress file."""

  def __init__(self, shared=None, slot=0, log_what=None):
    self._shared = shared
    self._slot = slot
    self._logger = (common.ProgressLogger(log_what) if log_what and
                    shared is None else None)

  def update(self, lines_read, bytes_read, total_bytes):
    if self._shared is not None:
      self._shared[self._slot] = (bytes_read, lines_read)
    elif self._logger is not None:
      self._logger.lines(lines_read, bytes_read, total_bytes)


def _numbered_lines(input_files, skip_header, progress):
  """(index, path, line number, text) of every data line of `input_files`."""
  sizes = [tf.io.gfile.stat(path).length for path in input_files]
  total = sum(sizes)
  index = 0
  for number, path in enumerate(input_files):
    before = sum(sizes[:number])
    def report(lines_read, bytes_read, _, before=before, index=index):
      progress.update(index + lines_read, before + bytes_read, total)
    for line_number, text in data_loader.iter_text_lines(
        path, report, skip_header=skip_header):
      yield index, path, line_number, text
      index += 1


def _parse(kind, text, path, line_number):
  """(source tokens, target tokens or None) of one line."""
  if kind == data_loader.PRETRAIN:
    return data_loader.parse_pretrain_line(text, path, line_number), None
  return data_loader.parse_finetune_line(text, path, line_number)


class _FirstAppearance(object):
  """Token counts, and for each token the index of the line it first
  appeared on, in bounded memory (one entry per line that brought a new
  token)."""

  def __init__(self):
    self.counts = collections.Counter()
    self.breaks = []  # (line index, number of distinct tokens after it)

  def add(self, index, tokens):
    before = len(self.counts)
    self.counts.update(tokens)
    if len(self.counts) != before:
      self.breaks.append((index, len(self.counts)))

  def first_lines(self):
    """(token, first line index, rank in this worker) in insertion order."""
    breaks = iter(self.breaks)
    line, upto = -1, 0
    for rank, token in enumerate(self.counts):
      while rank >= upto:
        line, upto = next(breaks)
      yield token, line, rank


def merge_first_appearance(parts):
  """One Counter ordered by first appearance from the workers' parts.

  The workers parsed disjoint sets of lines, so ordering every token by
  (the first line it appeared on, its rank in that worker's reading) gives
  the order of a single reader of the whole file.
  """
  first = {}
  total = collections.Counter()
  for part in parts:
    total.update(part.counts)
    for token, line, rank in part.first_lines():
      if token not in first or line < first[token][0]:
        first[token] = (line, rank)
  ordered = collections.Counter()
  for token in sorted(first, key=first.get):
    ordered[token] = total[token]
  return ordered


# ---------------------------------------------------------------------------
# Pass 1: count
# ---------------------------------------------------------------------------


def _count(job, worker, num_workers, progress):
  """Pass 1 over the lines of `worker`: counts, lengths, header evidence."""
  items, targets = _FirstAppearance(), _FirstAppearance()
  stats = {"num_lines": 0, "max_length": 0, "lengths": collections.Counter(),
           "max_targets": 0, "first_tokens": None,
           "first_line_shared": False}
  first = None
  for index, path, line_number, text in _numbered_lines(
      job["input_files"], job["skip_header"], progress):
    stats["num_lines"] = index + 1
    if index == 0:
      first = set(_parse(job["kind"], text, path, line_number)[0])
      stats["first_tokens"] = sorted(first)[:5]
    if index % num_workers != worker:
      continue
    source, target = _parse(job["kind"], text, path, line_number)
    items.add(index, source)
    stats["lengths"][len(source)] += 1
    if index > 0 and not stats["first_line_shared"]:
      stats["first_line_shared"] = not first.isdisjoint(source)
    if target is not None:
      targets.add(index, target)
      stats["max_targets"] = max(stats["max_targets"], len(target))
  stats["max_length"] = max(stats["lengths"]) if stats["lengths"] else 0
  return {"items": items, "targets": targets, "stats": stats}


def _merge_counts(parts):
  """The workers' pass-1 results as one."""
  stats = [p["stats"] for p in parts]
  lengths = collections.Counter()
  for s in stats:
    lengths.update(s["lengths"])
  return {
      "items": merge_first_appearance([p["items"] for p in parts]),
      "targets": merge_first_appearance([p["targets"] for p in parts]),
      "num_lines": max(s["num_lines"] for s in stats),
      "lengths": lengths,
      "max_length": max(s["max_length"] for s in stats),
      "max_targets": max(s["max_targets"] for s in stats),
      # Parsed by every worker: the same in all.
      "first_tokens": stats[0]["first_tokens"],
      "first_line_shared": any(s["first_line_shared"] for s in stats),
  }


# ---------------------------------------------------------------------------
# Pass 2: write
# ---------------------------------------------------------------------------


class _ExampleWriter(object):
  """Serializes fixed-length int64 features into one TFRecord file."""

  def __init__(self, path, names):
    self._writer = tf.io.TFRecordWriter(path)
    self._example = tf.train.Example()
    self._values = [self._example.features.feature[name].int64_list.value
                    for name in names]
    self.count = 0

  def write(self, *features):
    for values, feature in zip(self._values, features):
      values[:] = feature
    self._writer.write(self._example.SerializeToString())
    self.count += 1

  def close(self):
    self._writer.close()


def _write(job, worker, num_workers, progress):
  """Pass 2 over the shards of `worker`: writes them; returns their counts."""
  num_shards = job["num_shards"]
  mine = [s for s in range(num_shards) if s % num_workers == worker]
  finetune = job["kind"] == data_loader.FINETUNE
  names = ("source", "target", "user") if finetune else ("itemseq",)
  writers = {(split, s): _ExampleWriter(job["paths"][split][s], names)
             for split in ("train", "test") for s in mine}
  item_id = job["item_ids"].__getitem__  # every token counted in pass 1
  length = job["length"]
  counts = {"num_train_lines": 0, "num_train_users": 0, "num_test_users": 0,
            "train_targets": collections.Counter(), "first": {}}
  seed, fraction = job["split_seed"], job["test_fraction"]
  by_user = job.get("split_by", "row") == "user" or not finetune
  try:
    for index, path, line_number, text in _numbered_lines(
        job["input_files"], job["skip_header"], progress):
      shard = index % num_shards
      if shard % num_workers != worker:
        continue
      source, target = _parse(job["kind"], text, path, line_number)
      row = list(map(item_id, source))
      row += [0] * (length - len(row))
      if not finetune:
        split = "test" if split_unit(seed, index) < fraction else "train"
        rows = [row]
        if split == "train":
          counts["num_train_lines"] += 1
          if job["subsessions"]:
            rows = data_loader.generate_subsessions(
                np.array([row]), job["pad_id"], job["subsession_min_length"],
                shuffle=False).tolist()
        for r in rows:
          _log_first(counts["first"], split, {"itemseq": r})
          writers[split, shard].write(r)
        continue
      user_test = split_unit(seed, index) < fraction
      seen = set()
      for position, token in enumerate(target):
        target_id = job["target_ids"][token]
        is_test = user_test if by_user else (
            split_unit(seed, index, position) < fraction)
        split = "test" if is_test else "train"
        seen.add(split)
        if split == "train":
          counts["train_targets"][target_id] += 1
        _log_first(counts["first"], split,
                   {"source": row, "target": [target_id], "user": [index]})
        writers[split, shard].write(row, [target_id], [index])
      counts["num_train_users"] += "train" in seen
      counts["num_test_users"] += "test" in seen
  finally:
    for writer in writers.values():
      writer.close()
  counts["records"] = {"%s/%d" % key: w.count for key, w in writers.items()}
  return counts


def _log_first(logged, split, features, how_many=3):
  """Keeps a worker's first examples of each split for the log (the
  permutation converter logs its first ones too)."""
  if len(logged.setdefault(split, [])) < how_many:
    logged[split].append(" ".join("%s=%s" % kv
                                  for kv in sorted(features.items())))


# ---------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------


_FUNCTIONS = {"count": lambda: _count, "write": lambda: _write}


def worker_main(argv):
  """`python -m tfrecord_tools.streaming FUNCTION WORK_DIR WORKER WORKERS`.

  Reads the job from WORK_DIR, runs the pass for WORKER, writes progress
  to its row of WORK_DIR/progress and ("ok", result) or the error to
  WORK_DIR/result-WORKER (a worker is a process of its own, started
  afresh: nothing of the caller's main module is imported again).
  """
  name, work_dir, worker, num_workers = argv[1], argv[2], int(argv[3]), int(
      argv[4])
  with open(os.path.join(work_dir, "job"), "rb") as f:
    job = pickle.load(f)
  shared = np.memmap(os.path.join(work_dir, "progress"), dtype=np.float64,
                     mode="r+", shape=(num_workers, 2))
  try:
    result = ("ok", _FUNCTIONS[name]()(job, worker, num_workers,
                                       _Progress(shared, worker)))
  except data_loader.DataFormatError as e:
    result = ("format", (e.path, e.line_number, e.reason, e.line))
  except (data_loader.DatasetError, OSError) as e:
    result = ("dataset", str(e))
  final = os.path.join(work_dir, "result-%d" % worker)
  with open(final + ".tmp", "wb") as f:
    pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
  os.rename(final + ".tmp", final)


def _raise_first_error(errors, input_files):
  """Re-raises the error a single reader would have met first."""
  formats = [e for kind, e in errors if kind == "format"]
  if formats:
    path, line_number, reason, line = min(
        formats, key=lambda e: (input_files.index(e[0]), e[1]))
    raise data_loader.DataFormatError(path, line_number, reason, line)
  raise data_loader.DatasetError(errors[0][1])


def _tail(path, size=2000):
  with open(path, "rb") as f:
    f.seek(max(os.path.getsize(path) - size, 0))
    return f.read().decode("utf-8", "replace")


def run_workers(name, job, num_workers, what, total_bytes):
  """The pass `name` ("count" or "write") for every worker w of
  `num_workers`: `function(job, w, num_workers, progress)`.

  One worker runs in this process; more run in processes of their own
  (`python -m tfrecord_tools.streaming`), while this one logs their
  progress (done/total MB, lines/s, ETA). Returns the results in worker
  order; raises the error a single reader would have met first.
  """
  if num_workers <= 1:
    return [_FUNCTIONS[name]()(job, 0, 1, _Progress(log_what=what))]
  work_dir = tempfile.mkdtemp(prefix="peterrec-convert-")
  processes = []
  try:
    with open(os.path.join(work_dir, "job"), "wb") as f:
      pickle.dump(job, f, protocol=pickle.HIGHEST_PROTOCOL)
    shared = np.memmap(os.path.join(work_dir, "progress"), dtype=np.float64,
                       mode="w+", shape=(num_workers, 2))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [root] + [p for p in [env.get("PYTHONPATH")] if p])
    for worker in range(num_workers):
      with open(os.path.join(work_dir, "log-%d" % worker), "wb") as log:
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "tfrecord_tools.streaming", name, work_dir,
             str(worker), str(num_workers)], stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, env=env))
    logger = common.ProgressLogger("%s (%d processes)" % (what, num_workers))
    while any(p.poll() is None for p in processes):
      for worker, process in enumerate(processes):
        if process.poll() not in (None, 0):
          raise data_loader.DatasetError(
              "%s: worker process %d exited with code %d:\n%s" % (
                  what, worker, process.returncode,
                  _tail(os.path.join(work_dir, "log-%d" % worker))))
      logger.lines(int(shared[:, 1].sum()), int(shared[:, 0].min()),
                   total_bytes)
      time.sleep(_POLL_SECONDS)
    results = []
    for worker, process in enumerate(processes):
      path = os.path.join(work_dir, "result-%d" % worker)
      if process.returncode != 0 or not os.path.exists(path):
        raise data_loader.DatasetError(
            "%s: worker process %d exited with code %d:\n%s" % (
                what, worker, process.returncode,
                _tail(os.path.join(work_dir, "log-%d" % worker))))
      with open(path, "rb") as f:
        results.append(pickle.load(f))
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
    shutil.rmtree(work_dir, ignore_errors=True)
  errors = [r for r in results if r[0] != "ok"]
  if errors:
    _raise_first_error(errors, job["input_files"])
  return [value for _, value in results]


# ---------------------------------------------------------------------------
# The conversion
# ---------------------------------------------------------------------------


def _warn_about(kind, counts, input_files, skip_header):
  if (not skip_header and counts["num_lines"] >= 3 and
      not counts["first_line_shared"]):
    logging.warning(
        "the first line of %s looks like a header (%s: none of its tokens "
        "occurs on another line); it is converted as data. If it is a "
        "header, pass --skip_header", input_files[0],
        ",".join(counts["first_tokens"]))
  num_short = counts["num_lines"] - counts["lengths"][counts["max_length"]]
  if num_short and kind == data_loader.PRETRAIN:
    logging.warning(
        "%d of %d lines are shorter than the longest (%d items); they are "
        "right-padded with id 0 as the original does (left-pad them with "
        "the pad token in the CSV to avoid this)", num_short,
        counts["num_lines"], counts["max_length"])


def _count_unknown(counts, vocab):
  """(occurrences, distinct) of counted tokens missing from `vocab`."""
  unknown = [(t, c) for t, c in counts.items() if t not in vocab]
  return sum(c for _, c in unknown), len(unknown)


def convert(kind, input_files, out, num_shards, num_workers, test_fraction,
            split_seed, skip_header, pad_token, split_by="row",
            subsessions=False, subsession_min_length=5, min_item_count=1,
            max_vocab_size=0, item_vocab=None, item_vocab_path=None,
            refit_source_vocab=False, decide_task=None):
  """Converts `input_files` into `out` (a common.AtomicOutputs).

  Args: as `convert_csv.convert`; `item_vocab` is the loaded pretraining
  Vocabulary read from `item_vocab_path` (or None); `decide_task(
  num_distinct_targets, max_targets_per_line)` returns (task, inferred).

  Returns:
    the metadata entries of the dataset (without the options).
  """
  total_bytes = sum(tf.io.gfile.stat(p).length for p in input_files)
  if not num_workers:
    # A worker process costs a few seconds to start (TensorFlow's import).
    num_workers = (os.cpu_count() or 1) if total_bytes >= 32 << 20 else 1
  job = {"kind": kind, "input_files": list(input_files),
         "skip_header": skip_header}
  started = time.time()
  counts = _merge_counts(run_workers("count", job, num_workers,
                                     "pass 1/2, counting", total_bytes))
  _warn_about(kind, counts, input_files, skip_header)
  finetune = kind == data_loader.FINETUNE
  metadata = {}
  if not finetune:
    vocab = data_loader.Vocabulary().fit_counts(
        counts["items"], min_item_count, max_vocab_size or None,
        keep=(pad_token,))
    source_vocab = vocab
  elif refit_source_vocab:
    source_vocab = data_loader.Vocabulary().fit_counts(counts["items"])
    if item_vocab is not None:
      metadata["num_ids_differing_from_item_vocab"] = sum(
          1 for i, token in enumerate(source_vocab.tokens)
          if item_vocab.lookup(token) != i)
  else:
    source_vocab = item_vocab
  num_unknown, num_unknown_types = _count_unknown(counts["items"],
                                                  source_vocab)
  if num_unknown:
    logging.info("%d item occurrences (%d distinct items) are not in the "
                 "item vocabulary and map to id 0", num_unknown,
                 num_unknown_types)
  pad_id = source_vocab.lookup(pad_token) if pad_token in source_vocab else None
  paths = {split: [out.path(name) for name in data_loader.shard_file_names(
      split, num_shards)] for split in ("train", "test")}
  job.update(num_shards=num_shards, paths=paths, length=counts["max_length"],
             item_ids={t: source_vocab.lookup(t) for t in counts["items"]},
             split_seed=split_seed, test_fraction=test_fraction,
             split_by=split_by, subsessions=subsessions, pad_id=pad_id,
             subsession_min_length=subsession_min_length)
  if finetune:
    target_vocab = data_loader.Vocabulary().fit_counts(counts["targets"])
    job["target_ids"] = {t: target_vocab.lookup(t) for t in counts["targets"]}
    metadata["task"], metadata["task_inferred"] = decide_task(
        len(counts["targets"]), counts["max_targets"])
  written = run_workers("write", job, min(num_workers, num_shards),
                        "pass 2/2, writing %d shard(s)" % num_shards,
                        total_bytes)
  for split in ("train", "test"):
    for line in written[0]["first"].get(split, []):
      logging.info("%s example: %s", split, line)
  records = collections.Counter()
  for part in written:
    for key, count in part["records"].items():
      records[key.split("/")[0]] += count
  logging.info("converted %d lines in %.1f s (%.0f lines/s, %d process(es))",
               counts["num_lines"], time.time() - started,
               counts["num_lines"] / max(time.time() - started, 1e-9),
               num_workers)
  metadata.update({
      "item_vocab_size": len(source_vocab),
      "item_vocab_sha1": source_vocab.sha1(),
      "num_train": records["train"],
      "num_test": records["test"],
      "num_unknown_items": int(num_unknown),
      "num_unknown_item_types": int(num_unknown_types),
      "pad_token_id": pad_id,
      "num_shards": num_shards,
      "split_method": "hash",
  })
  if not finetune:
    vocab.save(out.path(data_loader.ITEM_VOCAB_FILE))
    metadata.update(
        seq_length=counts["max_length"], num_sequences=counts["num_lines"],
        num_train_sequences=sum(p["num_train_lines"] for p in written))
    return metadata
  source_vocab.save(out.path(data_loader.ITEM_VOCAB_FILE))
  target_vocab.save(out.path(data_loader.TARGET_VOCAB_FILE))
  train_targets = collections.Counter()
  for part in written:
    train_targets.update(part["train_targets"])
  target_counts = [0] * len(target_vocab)
  for token, count in counts["targets"].items():
    target_counts[target_vocab.lookup(token)] = count
  metadata.update({
      "item_vocab_from": (None if refit_source_vocab else
                          data_loader.absolute_path(item_vocab_path)),
      "refit_source_vocab": bool(refit_source_vocab),
      "target_vocab_size": len(target_vocab),
      "target_vocab_sha1": target_vocab.sha1(),
      "source_length": counts["max_length"],
      "causal_row_length": counts["max_length"] + 2,
      "noncausal_row_length": counts["max_length"] + 3,
      "max_targets_per_user": counts["max_targets"],
      "num_users": counts["num_lines"],
      "num_examples": sum(target_counts),
      "num_train_users": sum(p["num_train_users"] for p in written),
      "num_test_users": sum(p["num_test_users"] for p in written),
      "target_frequencies": target_counts,
      "train_target_frequencies": [train_targets[i]
                                   for i in range(len(target_vocab))],
  })
  return metadata


if __name__ == "__main__":
  # Through the module's own name, so that what it pickles names
  # tfrecord_tools.streaming, not __main__.
  from tfrecord_tools import streaming  # pylint: disable=import-self
  streaming.worker_main(sys.argv)
