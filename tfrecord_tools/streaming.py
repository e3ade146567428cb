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
import zlib

from absl import logging
import numpy as np
import tensorflow as tf

import data_loader
from tfrecord_tools import common
from tfrecord_tools import numeric_ids

_MASK64 = (1 << 64) - 1
_POLL_SECONDS = 0.5


def _mix64(value):
  """splitmix64's finaliser: a bijection of 64-bit ints that mixes all bits."""
  value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
  value = (value ^ (value >> 27)) * 0x94D049BB133111EB & _MASK64
  return value ^ (value >> 31)


def _seed_base(seed):
  return _mix64((seed * 0x9E3779B97F4A7C15 + 1) & _MASK64)


def split_unit(seed, *keys):
  """A number in [0, 1) fixed by `seed` and the int `keys`, uniform over keys.

  The streaming split puts a line (a user) in the test split when
  `split_unit(seed, line) < test_fraction`; a fine-tuning row split keys
  each (user, target) row by `split_unit(seed, line, target_position)`.
  """
  value = _seed_base(seed)
  for key in keys:
    value = _mix64((value ^ (key + 0x9E3779B97F4A7C15)) & _MASK64)
  return (value >> 11) / float(1 << 53)


def _mix64_array(value):
  """`_mix64` of a uint64 array (numpy's uint64 products wrap mod 2**64)."""
  value = (value ^ (value >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  value = (value ^ (value >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return value ^ (value >> np.uint64(31))


def split_units(seed, keys):
  """`split_unit(seed, key)` of each int of `keys`: float64 array."""
  base = np.uint64(_seed_base(seed))
  keys = np.asarray(keys, dtype=np.int64).astype(np.uint64)
  value = _mix64_array(base ^ (keys + np.uint64(0x9E3779B97F4A7C15)))
  return (value >> np.uint64(11)).astype(np.float64) / float(1 << 53)


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


def _raw_blocks(input_files, skip_header, progress):
  """(index of the first line, [line bytes]) by blocks of whole lines.

  The vectorized path's reader: lines are split from large reads and not
  decoded (numeric_ids.parse_block refuses anything but digits and commas;
  the per-line path, which reads like `iter_text_lines`, takes any other
  file, blank lines and "\\r\\n" endings included).
  """
  sizes = [tf.io.gfile.stat(path).length for path in input_files]
  index = 0
  for number, path in enumerate(input_files):
    before = sum(sizes[:number])
    with data_loader.open_binary(path) as (raw, stream):
      rest, skip = b"", skip_header
      while True:
        try:
          chunk = stream.read(numeric_ids.BLOCK_BYTES)
        except (OSError, EOFError, zlib.error) as e:
          raise data_loader.DatasetError("cannot read %s: %s" % (path, e))
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop() if chunk else b""
        if not chunk and lines == [b""]:
          break
        if skip and lines:
          lines, skip = lines[1:], False
        yield index, lines
        index += len(lines)
        progress.update(index, before + raw.tell(), sum(sizes))
        if not chunk:
          break


def _own_lines(start, lines, owner, num_owners):
  """(line indices int64, lines) of the lines i with i % num_owners ==
  owner, from a block whose first line is line `start`."""
  offset = (owner - start) % num_owners
  return (np.arange(start + offset, start + len(lines), num_owners,
                    dtype=np.int64), lines[offset::num_owners])


def _count_numeric(job, worker, num_workers, progress):
  """Pass 1 of a pretraining file of decimal ids, by blocks; {"numeric":
  False} as soon as a line is not one (the pass is then done per line)."""
  counts = numeric_ids.Counts()
  lengths = collections.Counter()
  stats = {"num_lines": 0, "max_targets": 0, "first_line_shared": False}
  first_ids = None
  for start, lines in _raw_blocks(job["input_files"], job["skip_header"],
                                  progress):
    if start == 0 and lines:
      parsed = numeric_ids.parse_block(lines[:1])
      if parsed is None:
        return {"numeric": False}
      first_ids = parsed[0]
      stats["first_tokens"] = sorted(set(map(str, first_ids.tolist())))[:5]
    stats["num_lines"] = start + len(lines)
    indices, own = _own_lines(start, lines, worker, num_workers)
    if not own:
      continue
    parsed = numeric_ids.parse_block(own)
    if parsed is None:
      return {"numeric": False}
    ids, fields = parsed
    counts.add(indices, ids, fields)
    lengths.update(dict(zip(*np.unique(fields, return_counts=True))))
    if not stats["first_line_shared"] and first_ids is not None:
      others = ids[np.repeat(indices, fields) != 0]
      stats["first_line_shared"] = bool(np.isin(others, first_ids).any())
  stats["lengths"] = collections.Counter(
      {int(k): int(v) for k, v in lengths.items()})
  stats["max_length"] = max(stats["lengths"]) if stats["lengths"] else 0
  return {"numeric": True, "items": counts.as_state(), "stats": stats}


def _merge_counts(parts):
  """The workers' pass-1 results as one."""
  stats = [p["stats"] for p in parts]
  lengths = collections.Counter()
  for s in stats:
    lengths.update(s["lengths"])
  numeric = parts[0].get("numeric", False)
  return {
      "numeric": numeric,
      "items": (numeric_ids.merge if numeric else merge_first_appearance)(
          [p["items"] for p in parts]),
      "targets": (collections.Counter() if numeric else
                  merge_first_appearance([p["targets"] for p in parts])),
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
    self.write_serialized(self._example.SerializeToString())

  def write_serialized(self, record):
    self._writer.write(record)
    self.count += 1

  def close(self):
    self._writer.close()


class _ShardWriters(object):
  """The writers of one worker's shards of both splits (a context manager
  that closes them); `records()` counts what each wrote."""

  def __init__(self, job, worker, num_workers, names):
    self.mine = [s for s in range(job["num_shards"])
                 if s % num_workers == worker]
    self._writers = {(split, s): _ExampleWriter(job["paths"][split][s], names)
                     for split in ("train", "test") for s in self.mine}

  def __getitem__(self, split_and_shard):
    return self._writers[split_and_shard]

  def __enter__(self):
    return self

  def __exit__(self, *unused):
    for writer in self._writers.values():
      writer.close()
    return False

  def records(self):
    return {"%s/%d" % key: w.count for key, w in self._writers.items()}


def _write(job, worker, num_workers, progress):
  """Pass 2 over the shards of `worker`: writes them; returns their counts."""
  num_shards = job["num_shards"]
  finetune = job["kind"] == data_loader.FINETUNE
  names = ("source", "target", "user") if finetune else ("itemseq",)
  item_id = job["item_ids"].__getitem__  # every token counted in pass 1
  length = job["length"]
  counts = {"num_train_lines": 0, "num_train_users": 0, "num_test_users": 0,
            "train_targets": collections.Counter(), "first": {}}
  seed, fraction = job["split_seed"], job["test_fraction"]
  by_user = job.get("split_by", "row") == "user" or not finetune
  with _ShardWriters(job, worker, num_workers, names) as writers:
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
  counts["records"] = writers.records()
  return counts


def _write_numeric(job, worker, num_workers, progress):
  """Pass 2 of a pretraining file of decimal ids, by blocks: the records of
  `_write`, byte for byte, vectorized. `num_workers` divides num_shards, so
  the lines of this worker's shards are every num_workers-th line."""
  num_shards = job["num_shards"]
  serializer = numeric_ids.ExampleSerializer("itemseq", tf.train.Example)
  counts = {"num_train_lines": 0, "first": {}}
  with _ShardWriters(job, worker, num_workers, ["itemseq"]) as writers:
    for start, lines in _raw_blocks(job["input_files"], job["skip_header"],
                                    progress):
      indices, own = _own_lines(start, lines, worker, num_workers)
      if not own:
        continue
      parsed = numeric_ids.parse_block(own)
      if parsed is None:
        raise data_loader.DatasetError(
            "%s changed during the conversion (pass 2 cannot read a line "
            "that pass 1 read)" % ", ".join(job["input_files"]))
      rows = numeric_ids.padded_rows(job["id_table"][parsed[0]], parsed[1],
                                     job["length"])
      is_test = split_units(job["split_seed"], indices) < job["test_fraction"]
      shards = indices % num_shards
      for shard in writers.mine:
        for split, selected in (("train", ~is_test), ("test", is_test)):
          chosen = rows[selected & (shards == shard)]
          if split == "train":
            counts["num_train_lines"] += len(chosen)
            if job["subsessions"] and len(chosen):
              chosen = data_loader.generate_subsessions(
                  chosen, job["pad_id"], job["subsession_min_length"],
                  shuffle=False)
          for row in chosen[:3].tolist():
            _log_first(counts["first"], split, {"itemseq": row})
          writer = writers[split, shard]
          for record in serializer.serialize(chosen):
            writer.write_serialized(record)
  counts["records"] = writers.records()
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


def _pass(name, job):
  """The worker function of pass `name` for `job`."""
  numeric = job.get("numeric", False)
  if name == "count":
    return _count_numeric if numeric else _count
  return _write_numeric if numeric else _write


def _run_pass(name, job, worker, num_workers, progress):
  """(status, value): ("ok", result) or a picklable error."""
  try:
    return "ok", _pass(name, job)(job, worker, num_workers, progress)
  except data_loader.DataFormatError as e:
    return "format", (e.path, e.line_number, e.reason, e.line)
  except (data_loader.DatasetError, OSError) as e:
    return "dataset", str(e)


def _write_pickle(path, value):
  with open(path + ".tmp", "wb") as f:
    pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
  os.rename(path + ".tmp", path)


def worker_main(argv):
  """`python -m tfrecord_tools.streaming WORK_DIR WORKER NUM_WORKERS`.

  A worker process of a `WorkerPool` (started afresh: nothing of the
  caller's main module is imported again). It runs the passes the pool
  puts in WORK_DIR/job-<n>, n = 0, 1, ..., writing progress to its row of
  WORK_DIR/progress and each result to WORK_DIR/result-<n>-<WORKER>, until
  WORK_DIR/stop appears.
  """
  work_dir, worker, num_workers = argv[1], int(argv[2]), int(argv[3])
  shared = np.memmap(os.path.join(work_dir, "progress"), dtype=np.float64,
                     mode="r+", shape=(num_workers, 2))
  step = 0
  while not os.path.exists(os.path.join(work_dir, "stop")):
    job_path = os.path.join(work_dir, "job-%d" % step)
    if not os.path.exists(job_path):
      time.sleep(0.05)
      continue
    with open(job_path, "rb") as f:
      name, job, num_active = pickle.load(f)
    result = (("idle", None) if worker >= num_active else
              _run_pass(name, job, worker, num_active,
                        _Progress(shared, worker)))
    _write_pickle(os.path.join(work_dir, "result-%d-%d" % (step, worker)),
                  result)
    step += 1


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


class WorkerPool(object):
  """Worker processes that run the passes of one conversion.

  With one worker everything runs in this process. With more, each is a
  `python -m tfrecord_tools.streaming` process started once for all the
  passes (TensorFlow's import costs seconds), while this process logs
  their progress (done/total MB, lines/s, ETA). Use as a context manager:
  leaving it stops and, if need be, kills every worker.
  """

  def __init__(self, num_workers):
    self.num_workers = num_workers
    self._processes = []
    self._step = 0
    self._work_dir = None

  def __enter__(self):
    if self.num_workers <= 1:
      return self
    self._work_dir = tempfile.mkdtemp(prefix="peterrec-convert-")
    self._shared = np.memmap(os.path.join(self._work_dir, "progress"),
                             dtype=np.float64, mode="w+",
                             shape=(self.num_workers, 2))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [root] + [p for p in [env.get("PYTHONPATH")] if p])
    for worker in range(self.num_workers):
      with open(self._log(worker), "wb") as log:
        self._processes.append(subprocess.Popen(
            [sys.executable, "-m", "tfrecord_tools.streaming", self._work_dir,
             str(worker), str(self.num_workers)], stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, env=env))
    return self

  def __exit__(self, *unused):
    if self._work_dir is None:
      return False
    with open(os.path.join(self._work_dir, "stop"), "w"):
      pass
    deadline = time.time() + 10
    for process in self._processes:
      try:
        process.wait(timeout=max(deadline - time.time(), 0.1))
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    shutil.rmtree(self._work_dir, ignore_errors=True)
    return False

  def _log(self, worker):
    return os.path.join(self._work_dir, "log-%d" % worker)

  def _check_alive(self, what):
    for worker, process in enumerate(self._processes):
      if process.poll() is not None:
        raise data_loader.DatasetError(
            "%s: worker process %d exited with code %d:\n%s" % (
                what, worker, process.returncode, _tail(self._log(worker))))

  def run(self, name, job, num_active, what, total_bytes):
    """Pass `name` ("count" or "write") on workers 0..num_active-1:
    `function(job, w, num_active, progress)`. Returns their results in
    worker order; raises the error a single reader would have met first.
    """
    if self._work_dir is None:
      results = [_run_pass(name, job, 0, 1, _Progress(log_what=what))]
    else:
      num_active = min(num_active, self.num_workers)
      step, self._step = self._step, self._step + 1
      self._shared[:] = 0
      _write_pickle(os.path.join(self._work_dir, "job-%d" % step),
                    (name, job, num_active))
      paths = [os.path.join(self._work_dir, "result-%d-%d" % (step, w))
               for w in range(self.num_workers)]
      logger = common.ProgressLogger("%s (%d processes)" % (what,
                                                            num_active))
      while not all(os.path.exists(path) for path in paths):
        self._check_alive(what)
        active = self._shared[:num_active]
        logger.lines(int(active[:, 1].min()), int(active[:, 0].min()),
                     total_bytes)
        time.sleep(_POLL_SECONDS)
      results = []
      for path in paths[:num_active]:
        with open(path, "rb") as f:
          results.append(pickle.load(f))
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
            refit_source_vocab=False, decide_task=None, numeric=True):
  """Converts `input_files` into `out` (a common.AtomicOutputs).

  Args: as `convert_csv.convert`; `item_vocab` is the loaded pretraining
  Vocabulary read from `item_vocab_path` (or None); `decide_task(
  num_distinct_targets, max_targets_per_line)` returns (task, inferred);
  `numeric` tries the vectorized path of decimal ids (pretraining only:
  `numeric_ids.py`), which gives the same result.

  Returns:
    the metadata entries of the dataset (without the options).
  """
  total_bytes = sum(tf.io.gfile.stat(p).length for p in input_files)
  if not num_workers:
    # A worker process costs a few seconds to start (TensorFlow's import).
    num_workers = (os.cpu_count() or 1) if total_bytes >= 32 << 20 else 1
  job = {"kind": kind, "input_files": list(input_files),
         "skip_header": skip_header,
         "numeric": numeric and kind == data_loader.PRETRAIN}
  with WorkerPool(num_workers) as pool:
    return _convert(pool, kind, job, out, total_bytes, num_shards,
                    test_fraction, split_seed, pad_token, split_by,
                    subsessions, subsession_min_length, min_item_count,
                    max_vocab_size, item_vocab, item_vocab_path,
                    refit_source_vocab, decide_task)


def _convert(pool, kind, job, out, total_bytes, num_shards, test_fraction,
             split_seed, pad_token, split_by, subsessions,
             subsession_min_length, min_item_count, max_vocab_size,
             item_vocab, item_vocab_path, refit_source_vocab, decide_task):
  """`convert` with its worker processes: count, fit, write."""
  started = time.time()
  counts = _count_lines(pool, job, total_bytes)
  _warn_about(kind, counts, job["input_files"], job["skip_header"])
  metadata = {"num_shards": num_shards, "split_method": "hash"}
  if kind == data_loader.FINETUNE:
    metadata.update(
        item_vocab_from=(None if refit_source_vocab else
                         data_loader.absolute_path(item_vocab_path)),
        refit_source_vocab=bool(refit_source_vocab))
    metadata["task"], metadata["task_inferred"] = decide_task(
        len(counts["targets"]), counts["max_targets"])
  # The vocabularies are saved, and the counts of their tokens dropped,
  # before the writers start: this process then holds only small tables.
  item_vocab = _fit_vocabularies(
      job, counts, out, metadata, pad_token, min_item_count, max_vocab_size,
      item_vocab, refit_source_vocab)
  job.update(num_shards=num_shards, length=counts["max_length"],
             paths={split: [out.path(name) for name in
                            data_loader.shard_file_names(split, num_shards)]
                    for split in ("train", "test")},
             split_seed=split_seed, test_fraction=test_fraction,
             split_by=split_by, subsessions=subsessions,
             pad_id=metadata["pad_token_id"],
             subsession_min_length=subsession_min_length)
  del item_vocab, counts["items"]
  written = pool.run("write", job, _num_writers(job, pool.num_workers),
                     "pass 2/2, writing %d shard(s)" % num_shards,
                     total_bytes)
  for split in ("train", "test"):
    for line in written[0]["first"].get(split, []):
      logging.info("%s example: %s", split, line)
  logging.info("converted %d lines in %.1f s (%.0f lines/s, %d process(es))",
               counts["num_lines"], time.time() - started,
               counts["num_lines"] / max(time.time() - started, 1e-9),
               pool.num_workers)
  _add_written_counts(kind, metadata, counts, written)
  return metadata


def _count_lines(pool, job, total_bytes):
  """Pass 1 (vectorized when it can be) and the merge of its parts."""
  parts = pool.run("count", job, pool.num_workers, "pass 1/2, counting",
                   total_bytes)
  if job["numeric"] and not all(p["numeric"] for p in parts):
    logging.info("not every field is a decimal id below %d: counting again, "
                 "line by line", numeric_ids.ID_LIMIT)
    job["numeric"] = False
    parts = pool.run("count", job, pool.num_workers, "pass 1/2, counting",
                     total_bytes)
  return _merge_counts(parts)


def _fit_vocabularies(job, counts, out, metadata, pad_token, min_item_count,
                      max_vocab_size, item_vocab, refit_source_vocab):
  """Fits (or takes) the vocabularies, saves them, puts their lookups in
  `job` and their entries in `metadata`; returns the source vocabulary."""
  if job["kind"] == data_loader.PRETRAIN:
    source_vocab = data_loader.Vocabulary().fit_counts(
        counts["items"], min_item_count, max_vocab_size or None,
        keep=(pad_token,))
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
  if job["numeric"]:
    job["id_table"] = numeric_ids.id_table(source_vocab, counts["items"])
  else:
    job["item_ids"] = {t: source_vocab.lookup(t) for t in counts["items"]}
  source_vocab.save(out.path(data_loader.ITEM_VOCAB_FILE))
  metadata.update(
      item_vocab_size=len(source_vocab), item_vocab_sha1=source_vocab.sha1(),
      num_unknown_items=int(num_unknown),
      num_unknown_item_types=int(num_unknown_types),
      pad_token_id=(source_vocab.lookup(pad_token)
                    if pad_token in source_vocab else None))
  if job["kind"] == data_loader.FINETUNE:
    target_vocab = data_loader.Vocabulary().fit_counts(counts["targets"])
    job["target_ids"] = {t: target_vocab.lookup(t) for t in counts["targets"]}
    target_vocab.save(out.path(data_loader.TARGET_VOCAB_FILE))
    target_counts = [0] * len(target_vocab)
    for token, count in counts["targets"].items():
      target_counts[target_vocab.lookup(token)] = count
    metadata.update(target_vocab_size=len(target_vocab),
                    target_vocab_sha1=target_vocab.sha1(),
                    target_frequencies=target_counts,
                    num_examples=sum(target_counts))
  return source_vocab


def _num_writers(job, num_workers):
  """Pass 2's workers: the vectorized one strides over lines, so their
  number divides the number of shards."""
  num_shards = job["num_shards"]
  if not job["numeric"]:
    return min(num_workers, num_shards)
  return max(d for d in range(1, min(num_workers, num_shards) + 1)
             if num_shards % d == 0)


def _add_written_counts(kind, metadata, counts, written):
  """The metadata entries that count what pass 2 wrote."""
  records = collections.Counter()
  for part in written:
    for key, count in part["records"].items():
      records[key.split("/")[0]] += count
  metadata.update(num_train=records["train"], num_test=records["test"])
  if kind == data_loader.PRETRAIN:
    metadata.update(
        seq_length=counts["max_length"], num_sequences=counts["num_lines"],
        num_train_sequences=sum(p["num_train_lines"] for p in written))
    return
  train_targets = collections.Counter()
  for part in written:
    train_targets.update(part["train_targets"])
  metadata.update({
      "source_length": counts["max_length"],
      "causal_row_length": counts["max_length"] + 2,
      "noncausal_row_length": counts["max_length"] + 3,
      "max_targets_per_user": counts["max_targets"],
      "num_users": counts["num_lines"],
      "num_train_users": sum(p["num_train_users"] for p in written),
      "num_test_users": sum(p["num_test_users"] for p in written),
      "train_target_frequencies": [
          train_targets[i] for i in range(metadata["target_vocab_size"])],
  })


if __name__ == "__main__":
  # Through the module's own name, so that what it pickles names
  # tfrecord_tools.streaming, not __main__.
  from tfrecord_tools import streaming  # pylint: disable=import-self
  streaming.worker_main(sys.argv)
