r"""Converts a pretraining or fine-tuning CSV (docs/MODEL.md §1) to TFRecords.

Writes into --output_dir: `train.tfrecord`, `test.tfrecord`, `item_vocab.txt`
(line i = token of id i, line 0 = <UNK>), for fine-tuning `target_vocab.txt`,
and `metadata.json` (sizes, lengths, row counts, target frequencies, the
command). Every file is written under a temporary name and renamed at the
end, so a failed conversion leaves nothing behind.

Pretraining:
  python -m tfrecord_tools.convert_csv --kind=pretrain \
      --input_csv=pretrain.csv --output_dir=data/pretrain --test_fraction=0.1

Fine-tuning, sources mapped through the pretraining vocabulary:
  python -m tfrecord_tools.convert_csv --kind=finetune \
      --input_csv=finetune.csv --output_dir=data/finetune \
      --item_vocab=data/pretrain/item_vocab.txt --test_fraction=0.2

`--refit_source_vocab` instead fits a new vocabulary on the fine-tuning
sources, as the original does (ids then only agree with the pretrained
model when both files list the items in the same order of first
appearance).

From Python (and in tests): `convert(kind, input_csv, output_dir, ...)`
returns the metadata dict; `make_pretrain_dataset` / `make_finetune_dataset`
write a small CSV from id lists and convert it in one call.
"""
import itertools
import os
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

import data_loader
from tfrecord_tools import common
from tfrecord_tools import streaming

OUTPUT_FILES = (data_loader.METADATA_FILE, data_loader.TRAIN_FILE,
                data_loader.TEST_FILE, data_loader.ITEM_VOCAB_FILE,
                data_loader.TARGET_VOCAB_FILE)
SHARD_PATTERNS = ("train-?????-of-?????.tfrecord",
                  "test-?????-of-?????.tfrecord")
SPLIT_METHODS = ("permutation", "hash")


def _load_item_vocab(path):
  """Loads a pretraining vocabulary, checked against its metadata if any."""
  data_loader.check_input_file(path, "item vocabulary file")
  directory = os.path.dirname(data_loader.absolute_path(path))
  if (os.path.basename(path) == data_loader.ITEM_VOCAB_FILE and
      tf.io.gfile.exists(os.path.join(directory,
                                      data_loader.METADATA_FILE))):
    data_loader.load_metadata(directory)  # Raises if they disagree.
  return data_loader.Vocabulary.load(path)


def _check_output_dir(output_dir, fingerprint, overwrite):
  """Refuses an output_dir that holds another dataset; returns stale files."""
  if not tf.io.gfile.exists(output_dir):
    return []
  if not tf.io.gfile.isdir(output_dir):
    raise data_loader.DatasetError(
        "--output_dir exists and is not a directory: %s" % output_dir)
  present = [n for n in OUTPUT_FILES
             if tf.io.gfile.exists(os.path.join(output_dir, n))]
  present += [os.path.basename(p) for pattern in SHARD_PATTERNS
              for p in sorted(tf.io.gfile.glob(os.path.join(output_dir,
                                                            pattern)))]
  if not present:
    return []
  try:
    existing = data_loader.read_metadata_json(output_dir)
    described = "a %s dataset converted from %s" % (
        existing.get("kind"), existing.get("input_csv", "?"))
    same = existing.get("fingerprint") == fingerprint
  except data_loader.DatasetError:
    described = "files %s of another dataset" % ", ".join(present)
    same = False
  if same or overwrite:
    return present
  raise data_loader.DatasetError(
      "output directory %s already holds a different dataset (%s); choose "
      "another --output_dir, delete it, or pass --overwrite" %
      (output_dir, described))


def _fingerprint(kind, input_files, options):
  """What makes two conversions the same dataset (not paths or times)."""
  sha1s = [data_loader.file_sha1(path) for path in input_files]
  fingerprint = {
      "kind": kind,
      "input_csv_sha1": sha1s[0] if len(sha1s) == 1 else sha1s,
      "input_csv_bytes": sum(tf.io.gfile.stat(path).length
                             for path in input_files),
  }
  fingerprint.update(options)
  return fingerprint


def _input_files(input_csv):
  """The checked input files of a name, glob or comma-separated list."""
  if not any(c in input_csv for c in ",*?["):
    data_loader.check_input_file(input_csv)
    return [input_csv]
  files = data_loader.resolve_input_files(input_csv)
  for path in files:
    data_loader.check_input_file(path)
  return files


def _read_lines(read, input_files, skip_header):
  """`read(path, progress_fn, skip_header)` over every input file, joined."""
  parts = []
  for path in input_files:
    progress = common.ProgressLogger("reading %s" % path)
    parts.append(read(path, progress.lines, skip_header))
  if isinstance(parts[0], tuple):
    return tuple(list(itertools.chain.from_iterable(p[i] for p in parts))
                 for i in range(len(parts[0])))
  return list(itertools.chain.from_iterable(parts))


def _write_split(out, split, features, lengths, num_shards):
  """Writes a split's examples into `num_shards` files of consecutive rows."""
  total = len(next(iter(features.values())))
  bounds = np.linspace(0, total, max(num_shards, 1) + 1).astype(int)
  for shard, name in enumerate(data_loader.shard_file_names(split,
                                                            num_shards)):
    common.write_examples(out.path(name), {
        k: v[bounds[shard]:bounds[shard + 1]] for k, v in features.items()},
                          lengths, split, log_first=3 if shard == 0 else 0)


def _warn_if_header(input_csv, token_lists, skip_header):
  suspect = None if skip_header else data_loader.header_suspect(token_lists)
  if suspect is not None:
    logging.warning(
        "the first line of %s looks like a header (%s: none of its tokens "
        "occurs on another line); it is converted as data. If it is a "
        "header, pass --skip_header", input_csv, ",".join(suspect[:5]))


def _convert_pretrain(input_files, out, num_shards, test_fraction,
                      split_seed, subsessions, subsession_min_length,
                      pad_token, skip_header, min_item_count, max_vocab_size,
                      train_only_files=()):
  """Reads, splits and writes a pretraining dataset; returns metadata.

  The lines of `train_only_files` join the training split after the split
  (and share the vocabulary): the held-out lines are drawn from
  `input_files` only.
  """
  sequences = _read_lines(data_loader.read_pretrain_csv, input_files,
                          skip_header)
  _warn_if_header(input_files[0], sequences, skip_header)
  train_only = (_read_lines(data_loader.read_pretrain_csv, train_only_files,
                            skip_header) if train_only_files else [])
  every_line = sequences + train_only
  vocab = data_loader.Vocabulary().fit(
      every_line, min_count=min_item_count, max_size=max_vocab_size or None,
      keep=(pad_token,))
  num_unknown, num_unknown_types = vocab.count_unknown(every_line)
  if num_unknown:
    logging.info("vocabulary: %d ids; %d rare items (%d occurrences) map to "
                 "<UNK>", len(vocab), num_unknown_types, num_unknown)
  seq_length = data_loader.max_length(every_line)
  num_short = sum(1 for s in every_line if len(s) < seq_length)
  if num_short:
    logging.warning(
        "%d of %d lines are shorter than the longest (%d items); they are "
        "right-padded with id 0 as the original does (left-pad them with "
        "the pad token in the CSV to avoid this)", num_short, len(every_line),
        seq_length)
  rows = vocab.transform(sequences, seq_length)
  train, test = data_loader.split_train_test(rows, test_fraction, split_seed)
  if train_only:
    # Permuted together: the lines come in user order, and the training
    # shuffle buffer is smaller than the file.
    train = np.concatenate([train, vocab.transform(train_only, seq_length)])
    train = train[np.random.RandomState(split_seed).permutation(len(train))]
  pad_id = vocab.lookup(pad_token) if pad_token in vocab else None
  num_split_train = len(train)
  if subsessions:
    train = data_loader.generate_subsessions(train, pad_id,
                                             subsession_min_length)
  lengths = {"itemseq": seq_length}
  _write_split(out, "train", {"itemseq": train}, lengths, num_shards)
  _write_split(out, "test", {"itemseq": test}, lengths, num_shards)
  vocab.save(out.path(data_loader.ITEM_VOCAB_FILE))
  return {
      "item_vocab_size": len(vocab),
      "item_vocab_sha1": vocab.sha1(),
      "seq_length": seq_length,
      "num_sequences": len(sequences),
      "num_train_only_sequences": len(train_only),
      "num_train_sequences": num_split_train,
      "num_train": len(train),
      "num_test": len(test),
      "num_unknown_items": int(num_unknown),
      "num_unknown_item_types": int(num_unknown_types),
      "pad_token_id": pad_id,
  }


def _decide_task(task, inferred):
  """(task, whether inferred): the task asked for, else `inferred` = (task,
  reason) with a message saying why."""
  if task is not None:
    return task, False
  task, reason = inferred
  other = [t for t in data_loader.TASKS if t != task][0]
  logging.warning("task: %s, inferred (%s); pass --task=%s if the targets "
                  "are %s", task, reason, other,
                  "class labels" if other == "classification" else "items")
  return task, True


def _convert_finetune(input_files, out, num_shards, item_vocab_path,
                      refit_source_vocab, test_fraction, split_seed, split_by,
                      pad_token, skip_header, task):
  """Reads, maps, splits and writes a fine-tuning dataset; returns metadata."""
  pretrain_vocab = (_load_item_vocab(item_vocab_path)
                    if item_vocab_path else None)
  sources, targets = _read_lines(data_loader.read_finetune_csv, input_files,
                                 skip_header)
  _warn_if_header(input_files[0], sources, skip_header)
  extra = dict(zip(("task", "task_inferred"), _decide_task(
      task, data_loader.infer_task(targets))))
  if refit_source_vocab:
    item_vocab = data_loader.Vocabulary().fit(sources)
    logging.warning(
        "--refit_source_vocab: fitted a new source vocabulary (%d ids) as the "
        "original does; its ids match a pretrained model only if the "
        "pretraining file lists the items in the same order", len(item_vocab))
    if pretrain_vocab is not None:
      differing = sum(1 for i, token in enumerate(item_vocab.tokens)
                      if pretrain_vocab.lookup(token) != i)
      extra["num_ids_differing_from_item_vocab"] = differing
      if differing:
        logging.warning("%d of %d refitted source ids differ from %s: the "
                        "pretrained item embeddings will be looked up for the "
                        "wrong items", differing, len(item_vocab),
                        item_vocab_path)
  else:
    item_vocab = pretrain_vocab
  num_unknown, num_unknown_types = item_vocab.count_unknown(sources)
  if num_unknown:
    logging.warning("%d source item occurrences (%d distinct items) are not in "
                    "the item vocabulary and map to id 0", num_unknown,
                    num_unknown_types)
  target_vocab = data_loader.Vocabulary().fit(targets)
  source_length = data_loader.max_length(sources)
  source_ids = item_vocab.transform(sources, source_length)
  target_ids = target_vocab.transform(targets, data_loader.max_length(targets))
  example_sources, example_targets, example_users = (
      data_loader.finetune_examples(source_ids, target_ids,
                                    return_users=True))
  if split_by == "user":
    train_index, test_index = data_loader.split_train_test_by_user(
        example_users, test_fraction, split_seed)
  else:
    train_index, test_index = data_loader.split_train_test(
        np.arange(len(example_targets)), test_fraction, split_seed)
  lengths = {"source": source_length, "target": 1, "user": 1}
  for split, index in (("train", train_index), ("test", test_index)):
    _write_split(out, split, {
        "source": example_sources[index],
        "target": example_targets[index].reshape([-1, 1]),
        "user": example_users[index].reshape([-1, 1]),
    }, lengths, num_shards)
  item_vocab.save(out.path(data_loader.ITEM_VOCAB_FILE))
  target_vocab.save(out.path(data_loader.TARGET_VOCAB_FILE))
  metadata = {
      "item_vocab_size": len(item_vocab),
      "item_vocab_sha1": item_vocab.sha1(),
      "item_vocab_from": (None if refit_source_vocab else
                          data_loader.absolute_path(item_vocab_path)),
      "refit_source_vocab": bool(refit_source_vocab),
      "target_vocab_size": len(target_vocab),
      "target_vocab_sha1": target_vocab.sha1(),
      "source_length": source_length,
      "causal_row_length": source_length + 2,
      "noncausal_row_length": source_length + 3,
      "max_targets_per_user": int(target_ids.shape[1]),
      "num_users": len(sources),
      "num_examples": int(len(example_targets)),
      "num_train": int(len(train_index)),
      "num_test": int(len(test_index)),
      "num_train_users": int(len(np.unique(example_users[train_index]))),
      "num_test_users": int(len(np.unique(example_users[test_index]))),
      "target_frequencies": data_loader.target_frequencies(
          example_targets, len(target_vocab)),
      "train_target_frequencies": data_loader.target_frequencies(
          example_targets[train_index], len(target_vocab)),
      "num_unknown_items": int(num_unknown),
      "num_unknown_item_types": int(num_unknown_types),
      "pad_token_id": (item_vocab.lookup(pad_token)
                       if pad_token in item_vocab else None),
  }
  metadata.update(extra)
  return metadata


def convert(kind, input_csv, output_dir, item_vocab=None,
            refit_source_vocab=False, test_fraction=0.2, split_seed=10,
            split_by="row", subsessions=False, subsession_min_length=5,
            pad_token="0", skip_header=False, task=None, min_item_count=1,
            max_vocab_size=0, split_method="permutation", num_shards=1,
            num_workers=0, overwrite=False, command=None,
            print_summary=True, train_only_csv=None):
  """Converts a CSV into a TFRecord dataset directory.

  Args:
    kind: "pretrain" or "finetune".
    input_csv: the CSV (plain or gzipped), or several: a glob or a
      comma-separated list, read as one file in sorted order (each file's
      first line is skipped with `skip_header`).
    output_dir: created if missing; must not hold a different dataset
      unless `overwrite`.
    item_vocab: finetune: the pretraining `item_vocab.txt` to map sources
      through (unknown items -> 0, counted in the metadata).
    refit_source_vocab: finetune: fit a new source vocabulary instead, the
      original's behaviour (with `item_vocab` too, the metadata counts the
      ids that differ).
    test_fraction: the original's `tt_percentage`, in [0, 1).
    split_seed: seed of the split permutation (10 as the original).
    split_by: finetune: "row" permutes the (user, target) rows, as the
      original, so one user's targets can be on both sides; "user" permutes
      the users, so no user is in both splits.
    subsessions: pretrain: add the subsession augmentation to the training
      split (`data_loader.generate_subsessions`).
    subsession_min_length: shortest subsession (real items).
    pad_token: the CSV's left-pad token ("0"); its id is recorded and used
      by the subsession augmentation.
    skip_header: the first line is a header, not data. Without it, a first
      line none of whose tokens occurs elsewhere is converted with a
      warning.
    task: finetune: "recommendation" (the targets are items) or
      "classification" (class labels); None infers it
      (`data_loader.infer_task`) and says so. Recorded in the metadata and
      read by every later command.
    min_item_count: pretrain: items seen fewer times map to `<UNK>` (id 0).
    max_vocab_size: pretrain: at most this many ids with `<UNK>`, the most
      frequent items kept (0: no cap). Ids stay in order of first
      appearance; the items left out are counted in the metadata.
    split_method: "permutation", the original's (a seeded permutation of
      all lines, which holds the whole file in memory), or "hash": two
      streaming passes, each line's split from a seeded hash of its index,
      memory bound by the vocabulary (`tfrecord_tools/streaming.py`).
    num_shards: files per split (`train-00000-of-00016.tfrecord`, ...);
      1 writes `train.tfrecord` and `test.tfrecord`.
    num_workers: "hash": processes per pass (0: one per core for inputs
      of 32 MB or more, else one; at most `num_shards` when writing).
    overwrite: replace whatever dataset `output_dir` holds.
    command: the command to record; None records this Python call.
    print_summary: print a summary to stdout.
    train_only_csv: pretrain: more lines (a file, glob or list) that join
      the training split only, e.g. the earlier windows of each user's
      history (`tfrecord_tools.movielens --pretrain_window_stride`), so
      that the held-out lines stay one per user. "permutation" only.

  Returns:
    The metadata dict written to `metadata.json`.

  Raises:
    data_loader.DataFormatError: a malformed line (file, line and text in
      the message).
    data_loader.DatasetError: missing/empty inputs, a vocabulary that does
      not match its metadata, an output_dir holding another dataset.
  """
  if kind not in data_loader.KINDS:
    raise ValueError("kind must be one of %s, got %r" %
                     (data_loader.KINDS, kind))
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError("test_fraction must be in [0, 1), got %r" %
                     (test_fraction,))
  if kind != data_loader.PRETRAIN and (min_item_count != 1 or
                                      max_vocab_size):
    raise ValueError("min_item_count / max_vocab_size apply to pretrain "
                     "only (fine-tuning maps through its vocabulary)")
  if min_item_count < 1 or max_vocab_size < 0 or max_vocab_size == 1:
    raise ValueError("min_item_count must be >= 1 and max_vocab_size 0 or "
                     ">= 2, got %d and %d" % (min_item_count, max_vocab_size))
  if kind == data_loader.PRETRAIN and (item_vocab or refit_source_vocab):
    raise ValueError("item_vocab / refit_source_vocab apply to finetune only")
  if split_by not in data_loader.SPLIT_BY:
    raise ValueError("split_by must be one of %s, got %r" %
                     (data_loader.SPLIT_BY, split_by))
  if kind == data_loader.PRETRAIN and split_by != "row":
    raise ValueError("split_by applies to finetune only (a pretraining line "
                     "is a user)")
  if task is not None and (kind != data_loader.FINETUNE or
                           task not in data_loader.TASKS):
    raise ValueError("task applies to finetune only and must be one of %s, "
                     "got %r" % (data_loader.TASKS, task))
  if train_only_csv and (kind != data_loader.PRETRAIN or
                         split_method != "permutation"):
    raise ValueError("train_only_csv applies to pretrain with "
                     "split_method=permutation only")
  if kind == data_loader.FINETUNE:
    if subsessions:
      raise ValueError("subsessions apply to pretrain only")
    if not item_vocab and not refit_source_vocab:
      raise ValueError(
          "finetune needs item_vocab (the pretraining item_vocab.txt, so that "
          "source ids match the pretrained model) or refit_source_vocab=True "
          "(the original's behaviour)")
  if split_method not in SPLIT_METHODS:
    raise ValueError("split_method must be one of %s, got %r" %
                     (SPLIT_METHODS, split_method))
  if num_shards < 1 or num_workers < 0:
    raise ValueError("num_shards must be >= 1 and num_workers >= 0, got %d "
                     "and %d" % (num_shards, num_workers))
  if command is None:
    command = common.python_call(
        "tfrecord_tools.convert_csv.convert", kind=kind, input_csv=input_csv,
        output_dir=output_dir, item_vocab=item_vocab,
        refit_source_vocab=refit_source_vocab, test_fraction=test_fraction,
        split_seed=split_seed, split_by=split_by, subsessions=subsessions,
        subsession_min_length=subsession_min_length, pad_token=pad_token,
        skip_header=skip_header, task=task, min_item_count=min_item_count,
        max_vocab_size=max_vocab_size, split_method=split_method,
        num_shards=num_shards, train_only_csv=train_only_csv)
  input_files = _input_files(input_csv)
  train_only_files = _input_files(train_only_csv) if train_only_csv else []
  if item_vocab:
    data_loader.check_input_file(item_vocab, "item vocabulary file")
  options = {"test_fraction": test_fraction, "split_seed": split_seed,
             "pad_token": pad_token}
  if skip_header:
    options["skip_header"] = True
  if task is not None:
    options["task"] = task
  if split_method != "permutation" or num_shards != 1:
    options.update(split_method=split_method, num_shards=num_shards)
  if kind == data_loader.PRETRAIN:
    options.update(subsessions=bool(subsessions),
                   subsession_min_length=subsession_min_length)
    if min_item_count != 1 or max_vocab_size:
      options.update(min_item_count=min_item_count,
                     max_vocab_size=max_vocab_size)
    if train_only_files:
      options["train_only_csv_sha1"] = [data_loader.file_sha1(path)
                                        for path in train_only_files]
  else:
    options.update(split_by=split_by,
                   refit_source_vocab=bool(refit_source_vocab),
                   item_vocab_from_sha1=(data_loader.file_sha1(item_vocab)
                                         if item_vocab else None))
  fingerprint = _fingerprint(kind, input_files, options)
  stale = _check_output_dir(output_dir, fingerprint, overwrite)

  with common.AtomicOutputs(output_dir, remove_on_commit=stale) as out:
    if split_method == "hash":
      metadata = streaming.convert(
          kind, input_files, out, num_shards,
          num_workers,
          test_fraction, split_seed, skip_header, pad_token,
          split_by=split_by, subsessions=subsessions,
          subsession_min_length=subsession_min_length,
          min_item_count=min_item_count, max_vocab_size=max_vocab_size,
          item_vocab=_load_item_vocab(item_vocab) if item_vocab else None,
          item_vocab_path=item_vocab, refit_source_vocab=refit_source_vocab,
          decide_task=lambda distinct, most: _decide_task(
              task, data_loader.infer_task_from_counts(distinct, most)))
    elif kind == data_loader.PRETRAIN:
      metadata = _convert_pretrain(input_files, out, num_shards,
                                   test_fraction, split_seed, subsessions,
                                   subsession_min_length, pad_token,
                                   skip_header, min_item_count,
                                   max_vocab_size, train_only_files)
    else:
      metadata = _convert_finetune(input_files, out, num_shards, item_vocab,
                                   refit_source_vocab, test_fraction,
                                   split_seed, split_by, pad_token,
                                   skip_header, task)
    metadata.setdefault("num_shards", num_shards)
    metadata.setdefault("split_method", split_method)
    metadata.update({
        "kind": kind,
        "format_version": data_loader.FORMAT_VERSION,
        "input_csv": (data_loader.absolute_path(input_files[0])
                      if len(input_files) == 1 else
                      [data_loader.absolute_path(p) for p in input_files]),
        "fingerprint": fingerprint,
        "command": command,
    })
    metadata.update(options)
    common.write_json(out.path(data_loader.METADATA_FILE), metadata)
  if print_summary:
    print(summary(metadata, output_dir))
  return metadata


def summary(metadata, output_dir):
  """A few lines describing a converted dataset."""
  lines = ["Converted %s CSV %s" % (metadata["kind"], metadata["input_csv"]),
           "  into %s" % data_loader.absolute_path(output_dir)]
  if metadata["kind"] == data_loader.PRETRAIN:
    lines.append("  item vocabulary: %d ids (with <UNK>; %d rare items, %d "
                 "occurrences, map to it), seq_length %d" % (
                     metadata["item_vocab_size"],
                     metadata.get("num_unknown_item_types", 0),
                     metadata["num_unknown_items"], metadata["seq_length"]))
    lines.append("  %d sequences -> train %d%s, test %d" % (
        metadata["num_sequences"], metadata["num_train"],
        " (with subsessions)" if metadata["subsessions"] else "",
        metadata["num_test"]))
  else:
    lines.append("  item vocabulary: %d ids (%s), source_length %d" % (
        metadata["item_vocab_size"], "refitted on the sources"
        if metadata["refit_source_vocab"] else "from " +
        metadata["item_vocab_from"], metadata["source_length"]))
    lines.append("  task: %s%s; target vocabulary: %d ids (with <UNK>)" % (
        metadata["task"], " (inferred)" if metadata["task_inferred"] else "",
        metadata["target_vocab_size"]))
    lines.append("  %d users -> %d (user, target) examples -> train %d, test "
                 "%d" % (metadata["num_users"], metadata["num_examples"],
                         metadata["num_train"], metadata["num_test"]))
    lines.append("  unknown source items: %d occurrences (%d distinct)" %
                 (metadata["num_unknown_items"],
                  metadata["num_unknown_item_types"]))
  lines.append("  split: test_fraction %g, seed %d, %s; %d shard(s) per "
               "split" % (metadata["test_fraction"], metadata["split_seed"],
                          "by a seeded hash of each line" if metadata.get(
                              "split_method") == "hash" else
                          "a seeded permutation", metadata.get("num_shards",
                                                               1)))
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# Small helpers for tests and examples
# ---------------------------------------------------------------------------


def write_pretrain_csv(path, sequences):
  """Writes `i1,i2,...` lines; `sequences` is a list of lists of tokens/ints."""
  with tf.io.gfile.GFile(path, "w") as f:
    for sequence in sequences:
      f.write(",".join(str(item) for item in sequence) + "\n")
  return path


def write_finetune_csv(path, sources, targets):
  """Writes `source,,targets` lines from two parallel lists of lists."""
  if len(sources) != len(targets):
    raise ValueError("sources and targets differ in length")
  with tf.io.gfile.GFile(path, "w") as f:
    for source, target in zip(sources, targets):
      f.write(",".join(str(i) for i in source) + data_loader.FINETUNE_SEPARATOR
              + ",".join(str(t) for t in target) + "\n")
  return path


def make_pretrain_dataset(output_dir, sequences, **options):
  """Writes `output_dir/input.csv` from `sequences` and converts it.

  Example: `make_pretrain_dataset(tmp, [[1, 2, 3], [2, 3, 4]],
  test_fraction=0.5)` -> metadata; TFRecords in `tmp`.
  """
  tf.io.gfile.makedirs(output_dir)
  csv = write_pretrain_csv(os.path.join(output_dir, "input.csv"), sequences)
  options.setdefault("print_summary", False)
  return convert(data_loader.PRETRAIN, csv, output_dir, **options)


def make_finetune_dataset(output_dir, sources, targets, **options):
  """Writes `output_dir/input.csv` and converts it (refits if no item_vocab)."""
  tf.io.gfile.makedirs(output_dir)
  csv = write_finetune_csv(os.path.join(output_dir, "input.csv"), sources,
                           targets)
  options.setdefault("print_summary", False)
  if not options.get("item_vocab"):
    options.setdefault("refit_source_vocab", True)
  return convert(data_loader.FINETUNE, csv, output_dir, **options)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def define_flags():
  flags.DEFINE_enum("kind", None, list(data_loader.KINDS),
                    "pretrain (`i1,i2,...` lines) or finetune "
                    "(`i1,...,,t1,t2,...` lines).")
  flags.DEFINE_string("input_csv", None, "The CSV to convert (.gz is fine), "
                      "or several: a glob or a comma-separated list.")
  flags.DEFINE_string("output_dir", None, "Where to write the dataset.")
  flags.DEFINE_string("item_vocab", None,
                      "finetune: the pretraining dataset's item_vocab.txt; "
                      "sources are mapped through it.")
  flags.DEFINE_bool("refit_source_vocab", False,
                    "finetune: fit a new source vocabulary (the original's "
                    "behaviour; ids may not match the pretrained model).")
  flags.DEFINE_float("test_fraction", 0.2,
                     "Fraction of rows in the test split (tt_percentage).")
  flags.DEFINE_integer("split_seed", 10, "Seed of the split permutation.")
  flags.DEFINE_enum("split_by", "row", list(data_loader.SPLIT_BY),
                    "finetune: split the (user, target) rows (the "
                    "original's) or the users (no user in both splits).")
  flags.DEFINE_string("train_only_csv", None,
                      "pretrain: more lines for the training split only "
                      "(e.g. the earlier windows of each user's history); "
                      "the held-out lines come from --input_csv.")
  flags.DEFINE_bool("subsessions", False,
                    "pretrain: add subsessions of the training sequences.")
  flags.DEFINE_integer("subsession_min_length", 5,
                       "pretrain: shortest subsession, in real items.")
  flags.DEFINE_string("pad_token", "0", "The CSV's left-padding token.")
  flags.DEFINE_bool("skip_header", False, "The first line is a header: "
                    "skip it.")
  flags.DEFINE_enum("task", None, list(data_loader.TASKS),
                    "finetune: what the targets are, recorded for every "
                    "later command: items to recommend or class labels. "
                    "Default: inferred (classification when every line has "
                    "one target and there are at most %d distinct ones), "
                    "with a message." % data_loader.MAX_INFERRED_CLASSES)
  flags.DEFINE_integer("min_item_count", 1, "pretrain: items seen fewer "
                       "times map to <UNK> (id 0), counted in the metadata.")
  flags.DEFINE_integer("max_vocab_size", 0, "pretrain: at most this many "
                       "ids (with <UNK>): the most frequent items are kept, "
                       "the rest map to <UNK>; 0: no cap.")
  flags.DEFINE_enum("split_method", "permutation", list(SPLIT_METHODS),
                    "permutation: the original's split, a seeded "
                    "permutation of all lines (holds the file in memory); "
                    "hash: two streaming passes, each line's split from a "
                    "seeded hash of its index, memory bound by the "
                    "vocabulary (for large logs).")
  flags.DEFINE_integer("num_shards", 1, "Files per split "
                       "(train-00000-of-00016.tfrecord, ...); 1: "
                       "train.tfrecord and test.tfrecord.")
  flags.DEFINE_integer("num_workers", 0, "--split_method=hash: processes "
                       "per pass; 0: one per core (one for inputs under 32 "
                       "MB).")
  flags.DEFINE_bool("overwrite", False,
                    "Replace a different dataset already in --output_dir.")


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  try:
    convert(FLAGS.kind, FLAGS.input_csv, FLAGS.output_dir,
            item_vocab=FLAGS.item_vocab,
            refit_source_vocab=FLAGS.refit_source_vocab,
            test_fraction=FLAGS.test_fraction, split_seed=FLAGS.split_seed,
            split_by=FLAGS.split_by, subsessions=FLAGS.subsessions,
            subsession_min_length=FLAGS.subsession_min_length,
            pad_token=FLAGS.pad_token, skip_header=FLAGS.skip_header,
            task=FLAGS.task, min_item_count=FLAGS.min_item_count,
            max_vocab_size=FLAGS.max_vocab_size,
            split_method=FLAGS.split_method, num_shards=FLAGS.num_shards,
            num_workers=FLAGS.num_workers, overwrite=FLAGS.overwrite,
            train_only_csv=FLAGS.train_only_csv,
            command=common.command_line("tfrecord_tools.convert_csv"))
  except (ValueError, OSError) as e:
    sys.exit("error: %s" % e)


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["kind", "input_csv", "output_dir"])
  app.run(main)
