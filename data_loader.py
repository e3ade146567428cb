"""PeterRec data: CSV parsing, vocabulary, example rows and tf.data input.

Two halves, both following docs/MODEL.md §1:

* Pure Python / numpy, used by the TFRecord converter (`tfrecord_tools/`),
  by tests and by the feed_dict benchmark: CSV readers, `Vocabulary` (the
  `tf.contrib.learn` VocabularyProcessor semantics), the fine-tuning example
  rows, the seed-10 train/test split and the subsession augmentation.
* `input_fn` builders: `tf.data` pipelines over the fixed-length TFRecord
  files the converter writes, with in-graph negative sampling
  (`ops/sampling.py`), so that training never uses `feed_dict`.

TFRecord layouts (int64 features, padded at write time):
  pretraining: `itemseq` [seq_length]
  fine-tuning: `source` [source_length], `target` [1], `user` [1]   (one
               example per (user, non-zero target) pair; `user` is the
               0-based line of the user in the CSV, from format version 2)

Fine-tuning rows (built in the graph from `source` and `target`):
  causal:     [source..., 0, target]      length source_length + 2
  non-causal: [0, source..., 0, target]   length source_length + 3
The 0 before the target is the `[CLS]` slot.
"""
import collections
import contextlib
import gzip
import hashlib
import json
import os
import re
import struct
import uuid
import zlib

import numpy as np
import tensorflow as tf

from ops import sampling

UNK_TOKEN = "<UNK>"
FINETUNE_SEPARATOR = ",,"
# The tokenizer regex of tf.contrib.learn's VocabularyProcessor: keeps word
# characters, "'" and "-" (so UUIDs stay whole) and splits CamelCase/ALLCAPS
# runs. Each comma-separated field of our CSVs must be exactly one token.
TOKEN_PATTERN = r"[A-Z]{2,}(?![a-z])|[A-Z][a-z]+(?=[A-Z])|[\'\w\-]+"
TOKEN_RE = re.compile(TOKEN_PATTERN, re.UNICODE)

PRETRAIN = "pretrain"
FINETUNE = "finetune"
KINDS = (PRETRAIN, FINETUNE)

METADATA_FILE = "metadata.json"
TRAIN_FILE = "train.tfrecord"
TEST_FILE = "test.tfrecord"
ITEM_VOCAB_FILE = "item_vocab.txt"
TARGET_VOCAB_FILE = "target_vocab.txt"
FORMAT_VERSION = 2  # 2: fine-tuning records carry `user`
SPLIT_BY = ("row", "user")
# What a fine-tuning dataset's targets are: items to recommend, or class
# labels (user profile). Decided at conversion, recorded in metadata.json.
TASKS = ("recommendation", "classification")
# `infer_task` calls a dataset classification only when every line has one
# target and there are at most this many distinct ones.
MAX_INFERRED_CLASSES = 32

DEFAULT_SHUFFLE_BUFFER = 10000


class DatasetError(ValueError):
  """A missing, empty or inconsistent input/output file or directory."""


class DataFormatError(DatasetError):
  """A malformed input line. The message names the file and line, shows it."""

  def __init__(self, path, line_number, reason, line=None):
    self.path = path
    self.line_number = line_number
    self.reason = reason
    self.line = line
    message = "%s, line %d: %s" % (path, line_number, reason)
    if line is not None:
      shown = repr(line[:300]) + ("..." if len(line) > 300 else "")
      message += "\n  line %d: %s" % (line_number, shown)
    super(DataFormatError, self).__init__(message)


# ---------------------------------------------------------------------------
# Files: local paths or any tf.io.gfile file system (gs://, hdfs://, ram://)
# ---------------------------------------------------------------------------


def is_url(path):
  return "://" in path


def absolute_path(path):
  """`path` made absolute; URLs (gs://..., ram://...) are returned as is."""
  return path if is_url(path) else os.path.abspath(path)


def temporary_name(path):
  """A hidden name next to `path`, unique to this process and call."""
  directory, name = os.path.split(path)
  return os.path.join(directory, ".%s.tmp-%d-%s" %
                      (name, os.getpid(), uuid.uuid4().hex[:8]))


def remove_if_exists(path):
  if tf.io.gfile.exists(path):
    tf.io.gfile.remove(path)


@contextlib.contextmanager
def atomic_text_writer(path):
  """A text writer on a temporary name next to `path`, renamed to `path`
  when the block ends without an exception (removed otherwise).

  Works on any tf.io.gfile file system. A local file gets the permissions
  a plain `open(path, "w")` would give (0666 less the umask).
  """
  tf.io.gfile.makedirs(os.path.dirname(absolute_path(path)))
  temporary = temporary_name(path)
  try:
    with tf.io.gfile.GFile(temporary, "w") as writer:
      yield writer
    tf.io.gfile.rename(temporary, path, overwrite=True)
  except BaseException:
    remove_if_exists(temporary)
    raise


def write_text_atomic(path, text):
  """Writes `text` to `path` through a temporary name and a rename."""
  with atomic_text_writer(path) as writer:
    writer.write(text)


def read_text(path):
  with tf.io.gfile.GFile(path, "r") as reader:
    return reader.read()


# ---------------------------------------------------------------------------
# Reading text files (.gz transparently)
# ---------------------------------------------------------------------------


def check_input_file(path, what="input file"):
  """Raises DatasetError unless `path` is an existing, non-empty file."""
  if not tf.io.gfile.exists(path):
    raise DatasetError("%s not found: %s" % (what, path))
  if tf.io.gfile.isdir(path):
    raise DatasetError("%s is a directory, expected a file: %s" % (what, path))
  if tf.io.gfile.stat(path).length == 0:
    raise DatasetError("%s is empty: %s" % (what, path))


def iter_text_lines(path, progress_fn=None, encoding="utf-8",
                    progress_every=50000, skip_header=False):
  """Yields (line_number, text) for each line of a text file.

  Gzip files (by their magic bytes, whatever the name) are decompressed on
  the fly. `text` has its trailing "\\r\\n" removed. Lines are decoded one by
  one, so undecodable bytes are reported with their line number. Blank lines
  at the end of the file are dropped (an editor's trailing newlines); blank
  lines before the last line are yielded (and are errors to the parsers).
  `skip_header` drops line 1.

  Args:
    path: file name.
    progress_fn: optional callable(lines_read, bytes_read, total_bytes),
      called every `progress_every` lines and at the end; bytes are bytes of
      the file on disk (compressed bytes for .gz).
    encoding: text encoding, UTF-8 by default.
    progress_every: lines between two progress_fn calls.

  Raises:
    DatasetError: missing or empty file, or a corrupt gzip stream.
    DataFormatError: a line that is not valid `encoding`.
  """
  check_input_file(path)
  total_bytes = tf.io.gfile.stat(path).length
  with open_binary(path) as (raw, stream):
    line_number = 0
    blank = []  # blank lines not yet known to be inside the file
    try:
      for data in stream:
        line_number += 1
        if skip_header and line_number == 1:
          continue
        try:
          text = data.decode(encoding)
        except UnicodeDecodeError as e:
          raise DataFormatError(
              path, line_number,
              "undecodable bytes (not %s) at byte %d of the line" %
              (encoding, e.start), data.rstrip(b"\r\n"))
        text = text.rstrip("\r\n")
        if not text.strip():
          blank.append((line_number, text))
          continue
        for held in blank:
          yield held
        blank = []
        yield line_number, text
        if progress_fn is not None and line_number % progress_every == 0:
          progress_fn(line_number, raw.tell(), total_bytes)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile: an OSError.
      raise DatasetError("cannot read %s after line %d: %s" %
                         (path, line_number, e))
    if line_number == len(blank) + (1 if skip_header else 0):
      raise DatasetError("input file is empty: %s" % path)
    if progress_fn is not None:
      progress_fn(line_number, total_bytes, total_bytes)


@contextlib.contextmanager
def open_binary(path):
  """(raw file, byte stream) of `path`: the stream decompresses gzip (by its
  magic bytes, whatever the name); `raw.tell()` is the position on disk.
  Local files through Python's own reader (faster line iteration)."""
  raw = (tf.io.gfile.GFile(path, "rb") if is_url(path) else open(path, "rb"))
  try:
    is_gzip = raw.read(2) == b"\x1f\x8b"
    raw.seek(0)
    yield raw, (gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip else raw)
  finally:
    raw.close()


def file_sha1(path):
  """Hex SHA-1 of a file's bytes (as stored, not decompressed)."""
  digest = hashlib.sha1()
  with tf.io.gfile.GFile(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


# ---------------------------------------------------------------------------
# CSV parsing
# ---------------------------------------------------------------------------


def split_fields(text, what, path="<string>", line_number=0, line=None):
  """Splits a comma-separated list of tokens and checks every token.

  Each field (surrounding spaces stripped) must be exactly one token of
  TOKEN_RE: then the original's regex tokenisation of the whole line gives
  the same tokens, one per field. A field like "a b", "x;y", "AB12" (two
  regex tokens) or "<x>" (none) would silently change the sequence in the
  original and is an error here.

  Args:
    text: the comma-separated part of a line.
    what: a name for error messages ("sequence", "source sequence", ...).
    path, line_number, line: where the text comes from, for errors.

  Returns:
    list of str tokens.
  """
  if (text and text[0] != "," and text[-1] != "," and ",," not in text and
      text.replace(",", "").isdigit()):
    # Numeric ids (nearly every real log): each field is one token of the
    # regex, with nothing to strip; the same result as the checks below.
    return text.split(",")
  line = text if line is None else line
  if not text.replace(",", "").strip():
    raise DataFormatError(path, line_number, "empty %s" % what, line)
  tokens = []
  for index, field in enumerate(text.split(",")):
    token = field.strip()
    if not token:
      raise DataFormatError(
          path, line_number,
          "empty token in the %s (field %d)" % (what, index + 1), line)
    if TOKEN_RE.findall(token) != [token]:
      raise DataFormatError(
          path, line_number,
          "token %r in the %s (field %d) cannot be parsed: it is not one "
          "token of the vocabulary regex %s" %
          (token, what, index + 1, TOKEN_PATTERN), line)
    tokens.append(token)
  return tokens


def parse_pretrain_line(line, path="<string>", line_number=0):
  """`i1,i2,...,iN` -> list of N str tokens (docs/MODEL.md §1)."""
  if FINETUNE_SEPARATOR in line:
    raise DataFormatError(
        path, line_number, "unexpected '%s' in a pretraining line (is this a "
        "fine-tuning file? use --kind=finetune)" % FINETUNE_SEPARATOR, line)
  return split_fields(line, "sequence", path, line_number, line)


def parse_finetune_line(line, path="<string>", line_number=0):
  """`i1,...,iN,,t1,t2,...` -> (source tokens, target tokens)."""
  if FINETUNE_SEPARATOR not in line:
    raise DataFormatError(
        path, line_number, "missing the '%s' separator between the source "
        "sequence and the targets" % FINETUNE_SEPARATOR, line)
  source_text, target_text = line.split(FINETUNE_SEPARATOR, 1)
  if FINETUNE_SEPARATOR in target_text:
    raise DataFormatError(
        path, line_number,
        "more than one '%s' separator" % FINETUNE_SEPARATOR, line)
  source = split_fields(source_text, "source sequence", path, line_number,
                        line)
  targets = split_fields(target_text, "target list", path, line_number, line)
  return source, targets


def read_pretrain_csv(path, progress_fn=None, skip_header=False):
  """Reads a pretraining CSV: a list (one per line) of lists of str tokens."""
  return [parse_pretrain_line(text, path, n)
          for n, text in iter_text_lines(path, progress_fn,
                                         skip_header=skip_header)]


def read_finetune_csv(path, progress_fn=None, skip_header=False):
  """Reads a fine-tuning CSV.

  Returns:
    (sources, targets): two lists, one entry per line, of lists of tokens.
  """
  sources, targets = [], []
  for n, text in iter_text_lines(path, progress_fn, skip_header=skip_header):
    source, target = parse_finetune_line(text, path, n)
    sources.append(source)
    targets.append(target)
  return sources, targets


# ---------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------


class Vocabulary(object):
  """Token <-> id map with the VocabularyProcessor semantics.

  Id 0 is `<UNK>`; tokens get ids 1, 2, ... in order of first appearance;
  unknown tokens look up as 0. The data's pad token (e.g. "0") is an
  ordinary token with its own id. Saved as one token per line, line i
  holding the token of id i (line 0 is `<UNK>`).
  """

  def __init__(self, tokens=()):
    """Creates a vocabulary holding `<UNK>` then `tokens` (deduplicated)."""
    self._tokens = [UNK_TOKEN]
    self._ids = {UNK_TOKEN: 0}
    for token in tokens:
      self.add(token)

  def add(self, token):
    """Adds `token` if new; returns its id."""
    token_id = self._ids.get(token)
    if token_id is None:
      token_id = len(self._tokens)
      self._ids[token] = token_id
      self._tokens.append(token)
    return token_id

  def fit(self, token_lists, min_count=1, max_size=None, keep=()):
    """Adds the tokens of `token_lists` (a list of lists); returns self.

    Args:
      token_lists: lists of tokens; ids follow the order of first appearance.
      min_count: leave out tokens seen fewer times (they look up as 0).
      max_size: at most this many ids, `<UNK>` included: the most frequent
        tokens are kept (ties: the earlier first appearance), still in order
        of first appearance. None: no cap.
      keep: tokens kept whatever their count (e.g. the pad token).
    """
    if min_count <= 1 and max_size is None:
      for tokens in token_lists:
        for token in tokens:
          self.add(token)
      return self
    counts = collections.Counter()
    for tokens in token_lists:
      counts.update(tokens)
    return self.fit_counts(counts, min_count, max_size, keep)

  def fit_counts(self, counts, min_count=1, max_size=None, keep=()):
    """`fit` from token counts listed in order of first appearance.

    Args:
      counts: mapping token -> count whose iteration order is the order of
        first appearance (a Counter filled in reading order is).
      min_count, max_size, keep: as in `fit`.
    """
    first = {token: n for n, token in enumerate(counts)}
    wanted = [t for t in first if counts[t] >= min_count or t in keep]
    if max_size is not None:
      room = max(max_size - len(self._tokens), 0)
      forced = [t for t in wanted if t in keep]
      others = sorted((t for t in wanted if t not in keep),
                      key=lambda t: (-counts[t], first[t]))
      wanted = set(forced + others[:max(room - len(forced), 0)])
    for token in sorted(wanted, key=first.get):
      self.add(token)
    return self

  def __len__(self):
    return len(self._tokens)

  def __contains__(self, token):
    return token in self._ids

  def __eq__(self, other):
    return isinstance(other, Vocabulary) and self._tokens == other._tokens

  def __ne__(self, other):
    return not self == other

  @property
  def tokens(self):
    """List of tokens; entry i is the token of id i."""
    return list(self._tokens)

  def lookup(self, token):
    """Id of `token`, 0 when unknown."""
    return self._ids.get(token, 0)

  def token(self, token_id):
    return self._tokens[token_id]

  def transform(self, token_lists, length):
    """Maps token lists to ids, right-padded with 0 (VocabularyProcessor).

    Args:
      token_lists: list of N lists of str tokens.
      length: int, the row length (`max_document_length`); longer lists are
        cut to their first `length` tokens, as VocabularyProcessor does.

    Returns:
      int64 numpy array [N, length].
    """
    ids = np.zeros([len(token_lists), length], dtype=np.int64)
    for row, tokens in enumerate(token_lists):
      for col, token in enumerate(tokens[:length]):
        ids[row, col] = self._ids.get(token, 0)
    return ids

  def count_unknown(self, token_lists):
    """(occurrences, distinct tokens) of tokens not in the vocabulary."""
    unknown = collections.Counter(
        token for tokens in token_lists for token in tokens
        if token not in self._ids)
    return sum(unknown.values()), len(unknown)

  def sha1(self):
    return hashlib.sha1(self._serialize().encode("utf-8")).hexdigest()

  def _serialize(self):
    return "".join(token + "\n" for token in self._tokens)

  def save(self, path):
    """Writes the vocabulary to `path` (via a temporary name and a rename)."""
    write_text_atomic(path, self._serialize())

  @classmethod
  def load(cls, path):
    """Reads a vocabulary file written by `save`.

    Raises:
      DatasetError: missing/empty file, line 0 not `<UNK>`, an empty or
        duplicated token, or a token the vocabulary regex cannot produce.
    """
    vocab = cls()
    for n, text in iter_text_lines(path):
      if n == 1:
        if text != UNK_TOKEN:
          raise DataFormatError(
              path, n, "a vocabulary file must start with %s (id 0)" %
              UNK_TOKEN, text)
        continue
      if TOKEN_RE.findall(text) != [text]:
        raise DataFormatError(path, n, "not a vocabulary token", text)
      if text in vocab:
        raise DataFormatError(path, n, "duplicate token %r (ids %d and %d)" %
                              (text, vocab.lookup(text), n - 1), text)
      vocab.add(text)
    return vocab


# ---------------------------------------------------------------------------
# In-memory datasets (the original's Data_Loader, without TensorFlow)
# ---------------------------------------------------------------------------

PretrainData = collections.namedtuple("PretrainData", ["item_ids", "vocab"])
PretrainData.__doc__ = """item_ids: int64 [num_sequences, seq_length]; vocab."""

FinetuneData = collections.namedtuple("FinetuneData", [
    "source_ids", "target_ids", "item_vocab", "target_vocab",
    "num_unknown_items", "num_unknown_item_types"
])
FinetuneData.__doc__ = """One entry per CSV line (user).

source_ids: int64 [num_users, source_length], right-padded with 0.
target_ids: int64 [num_users, max_targets], right-padded with 0.
item_vocab, target_vocab: the Vocabulary objects used.
num_unknown_items / num_unknown_item_types: source tokens missing from a
  given item vocabulary (occurrences / distinct); 0 when refitted.
"""


def infer_task(targets):
  """The task of fine-tuning targets, and why: (task, reason).

  Classification (class labels such as a gender) when every user has
  exactly one target and there are at most MAX_INFERRED_CLASSES distinct
  ones; recommendation (target items) otherwise.

  Args:
    targets: one list of target tokens per user.
  """
  distinct = len(set(t for row in targets for t in row))
  many = max(len(row) for row in targets) if targets else 0
  return infer_task_from_counts(distinct, many)


def infer_task_from_counts(num_distinct, max_targets_per_line):
  """`infer_task` from the number of distinct targets and the most targets
  on one line (every line has at least one)."""
  if max_targets_per_line <= 1 and num_distinct <= MAX_INFERRED_CLASSES:
    return "classification", ("every line has one target, %d distinct (at "
                               "most %d)" % (num_distinct,
                                             MAX_INFERRED_CLASSES))
  if max_targets_per_line > 1:
    return "recommendation", "some lines have %d targets" % (
        max_targets_per_line)
  return "recommendation", "%d distinct targets (more than %d)" % (
      num_distinct, MAX_INFERRED_CLASSES)


def header_suspect(token_lists, min_lines=3):
  """The first line's tokens when it looks like a header, else None.

  A header's tokens (`item1,item2,...`) occur on no other line; item ids of
  a real first line almost always recur. Files of fewer than `min_lines`
  lines are not judged.
  """
  if len(token_lists) < min_lines:
    return None
  first = set(token_lists[0])
  for tokens in token_lists[1:]:
    if first.intersection(tokens):
      return None
  return token_lists[0]


def max_length(token_lists):
  """The longest list's length: the original's `max_document_length`."""
  return max(len(tokens) for tokens in token_lists)


def load_pretrain_csv(path, progress_fn=None):
  """Reads a pretraining CSV like the original `data_loader_recsys`.

  Returns:
    PretrainData: ids by first appearance, every row right-padded with 0 to
    the longest line.
  """
  sequences = read_pretrain_csv(path, progress_fn)
  vocab = Vocabulary().fit(sequences)
  return PretrainData(vocab.transform(sequences, max_length(sequences)), vocab)


def load_finetune_csv(path, item_vocab=None, progress_fn=None):
  """Reads a fine-tuning CSV like `data_loader_recsys_transfer_finetune`.

  Args:
    path: the CSV (`source,,targets` lines).
    item_vocab: the pretraining `Vocabulary`; source tokens are mapped
      through it, unknown ones to 0. None refits a new vocabulary on the
      sources, which is what the original does (ids then only match the
      pretraining ids when both files list items in the same order).
    progress_fn: see `iter_text_lines`.

  Returns:
    FinetuneData. The target vocabulary is always fitted on the targets.
  """
  sources, targets = read_finetune_csv(path, progress_fn)
  if item_vocab is None:
    item_vocab = Vocabulary().fit(sources)
  num_unknown, num_unknown_types = item_vocab.count_unknown(sources)
  target_vocab = Vocabulary().fit(targets)
  return FinetuneData(
      source_ids=item_vocab.transform(sources, max_length(sources)),
      target_ids=target_vocab.transform(targets, max_length(targets)),
      item_vocab=item_vocab,
      target_vocab=target_vocab,
      num_unknown_items=num_unknown,
      num_unknown_item_types=num_unknown_types)


def finetune_examples(source_ids, target_ids, return_users=False):
  """One example per (user, non-zero target), in line order then target order.

  Args:
    source_ids: int [num_users, source_length].
    target_ids: int [num_users, max_targets], 0 = padding.
    return_users: also return the user (0-based line) of each example.

  Returns:
    (sources int64 [num_examples, source_length], targets int64
    [num_examples]), and users int64 [num_examples] with `return_users`.
  """
  source_ids = np.asarray(source_ids, dtype=np.int64)
  target_ids = np.asarray(target_ids, dtype=np.int64)
  users, columns = np.nonzero(target_ids)  # row-major: the original's order
  examples = (source_ids[users], target_ids[users, columns])
  return examples + (users.astype(np.int64),) if return_users else examples


def example_rows(sources, targets, causal):
  """Rows of docs/MODEL.md §1 from per-example sources and targets.

  Args:
    sources: int [num_examples, source_length].
    targets: int [num_examples].
    causal: True for `[source..., 0, target]`, False for
      `[0, source..., 0, target]`.

  Returns:
    int64 [num_examples, source_length + 2] (causal) or
    [num_examples, source_length + 3] (non-causal).
  """
  sources = np.asarray(sources, dtype=np.int64)
  targets = np.asarray(targets, dtype=np.int64).reshape([-1, 1])
  zeros = np.zeros_like(targets)
  parts = [sources, zeros, targets] if causal else [zeros, sources, zeros,
                                                    targets]
  return np.concatenate(parts, axis=1)


def build_finetune_rows(source_ids, target_ids, causal):
  """The original `Data_Loader.example`: per-user ids -> example rows.

  Args:
    source_ids: int [num_users, source_length].
    target_ids: int [num_users, max_targets], right-padded with 0.
    causal: row layout, see `example_rows`.

  Returns:
    int64 [num_examples, source_length + (2 if causal else 3)], one row per
    non-zero target.
  """
  sources, targets = finetune_examples(source_ids, target_ids)
  return example_rows(sources, targets, causal)


def target_frequencies(targets, target_vocab_size):
  """List [target_vocab_size] of counts of each target id among `targets`."""
  counts = np.bincount(np.asarray(targets, dtype=np.int64).reshape([-1]),
                       minlength=target_vocab_size)
  return [int(c) for c in counts]


def split_train_test(rows, test_fraction, seed=10):
  """The original's split: a seeded permutation, the last part is test.

  `np.random.seed(10); perm = np.random.permutation(n)`; the rows are
  permuted and the last `int(test_fraction * n)` are the test set. (A
  RandomState(seed) gives the same permutation without global state.)
  When `int(test_fraction * n)` is 0 the original's `rows[:-0]` makes the
  training set empty and everything test; here the test set is empty
  instead (docs/DEVIATIONS.md).

  Args:
    rows: numpy array (or list) with n rows.
    test_fraction: the original's `tt_percentage`, in [0, 1).
    seed: permutation seed, 10 as the original.

  Returns:
    (train_rows, test_rows), numpy arrays in permuted order.
  """
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError("test_fraction must be in [0, 1), got %r" %
                     (test_fraction,))
  rows = np.asarray(rows)
  perm = np.random.RandomState(seed).permutation(np.arange(len(rows)))
  rows = rows[perm]
  num_test = int(test_fraction * float(len(rows)))
  return rows[:len(rows) - num_test], rows[len(rows) - num_test:]


def split_train_test_by_user(users, test_fraction, seed=10):
  """A user-disjoint split: a seeded permutation of the users, the last part
  of which is test.

  The users are listed in order of first appearance, permuted with
  `RandomState(seed)` and the last `int(test_fraction * num_users)` are the
  test users; every row of a user goes where the user goes.

  Args:
    users: int array [num_rows], the user of each row.
    test_fraction: in [0, 1).
    seed: permutation seed.

  Returns:
    (train_index, test_index): int64 arrays of row indices, in the order of
    the permuted users (a user's rows in their original order).
  """
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError("test_fraction must be in [0, 1), got %r" %
                     (test_fraction,))
  users = np.asarray(users, dtype=np.int64)
  distinct, first = np.unique(users, return_index=True)
  distinct = distinct[np.argsort(first)]
  perm = np.random.RandomState(seed).permutation(distinct)
  num_test = int(test_fraction * float(len(perm)))
  position = dict(zip(perm.tolist(), range(len(perm))))
  order = np.array([position[u] for u in users.tolist()], dtype=np.int64)
  rows = np.argsort(order, kind="stable")
  is_test = order[rows] >= len(perm) - num_test
  return rows[~is_test], rows[is_test]


def carve_training_rows(users, validation_fraction=0.0, by="user",
                        labelled_fraction=1.0, num_labelled_users=None,
                        seed=10, labelled_seed=None):
  """Which rows of a training split train and which validate.

  First the validation rows are carved out (by user, or by row for the
  original's row split), with `RandomState(seed)`; then, among the users
  left, the labelled ones are drawn with `RandomState(labelled_seed)`:
  `num_labelled_users` of them when given, else
  `int(round(labelled_fraction * remaining))` (at least one). The
  validation rows never depend on the labelled subset, so few-label runs
  are selected on the same validation rows as full runs.

  Args:
    users: int array [num_rows], the user of each training row.
    validation_fraction: in [0, 1): share of the users (or rows) held out.
    by: "user" (no user in both parts) or "row".
    labelled_fraction: in (0, 1]: share of the remaining users trained on.
    num_labelled_users: optional int, overrides `labelled_fraction`.
    seed: int, seed of the validation split.
    labelled_seed: int, seed of the labelled subset (default seed + 1).

  Returns:
    (train_mask, validation_mask): bool arrays [num_rows], disjoint.

  Raises:
    ValueError: a fraction out of range, or more labelled users asked for
      than there are.
  """
  if by not in SPLIT_BY:
    raise ValueError("by must be one of %s, got %r" % (SPLIT_BY, by))
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError("validation_fraction must be in [0, 1), got %r" %
                     (validation_fraction,))
  if not 0.0 < labelled_fraction <= 1.0:
    raise ValueError("labelled_fraction must be in (0, 1], got %r" %
                     (labelled_fraction,))
  users = np.asarray(users, dtype=np.int64)
  num_rows = len(users)
  rng = np.random.RandomState(seed)
  validation = np.zeros([num_rows], dtype=bool)
  if by == "user":
    distinct = np.unique(users)
    held_out = rng.permutation(distinct)[:int(validation_fraction *
                                              len(distinct))]
    validation[np.isin(users, held_out)] = True
  else:
    held_out = rng.permutation(num_rows)[:int(validation_fraction * num_rows)]
    validation[held_out] = True
  remaining = np.unique(users[~validation])
  if num_labelled_users is not None:
    if not 0 < num_labelled_users <= len(remaining):
      raise ValueError(
          "num_labelled_users must be in [1, %d] (the training users left "
          "after the validation split), got %d" % (len(remaining),
                                                   num_labelled_users))
    count = num_labelled_users
  else:
    count = max(1, int(round(labelled_fraction * len(remaining))))
  if labelled_seed is None:
    labelled_seed = seed + 1
  labelled = np.random.RandomState(labelled_seed).permutation(
      remaining)[:count]
  train = ~validation & np.isin(users, labelled)
  return train, validation


def generate_subsessions(rows, pad_id, min_length=5, seed=10, shuffle=True):
  """Subsession augmentation of `NextitNet_TF_Pretrain.generatesubsequence`.

  A row `p 1 2 3 4 5 6 7` (p = the pad token's id, 7 real items) becomes
  `p 1 2 3 4 5 6 7`, `p p 1 2 3 4 5 6`, `p p p 1 2 3 4 5`: right-truncated,
  left-padded with `pad_id`, down to `min_length` (5) real items. Rows with
  fewer than `min_length + 1` real items are kept once as they are. The
  number of real items is the row length minus the count of `pad_id` in
  the row (the original's `list.count`). The result is shuffled with a
  seed-10 permutation, as the original does.

  Args:
    rows: int [N, L].
    pad_id: id of the data's pad token (the original's `padtoken`), or
      None when the vocabulary has no pad token (then nothing counts as
      padding and new rows are left-padded with 0).
    min_length: shortest number of real items in a subsession (5 in the
      original NextItNet script).
    seed: seed of the final permutation.
    shuffle: set False to keep generation order (for tests).

  Returns:
    int64 numpy array [M, L].
  """
  rows = np.asarray(rows, dtype=np.int64)
  # The original pads with len(vocab) + 1 when there is no pad token, an id
  # outside the embedding table; id 0 is used instead.
  fill = 0 if pad_id is None else pad_id
  out = []
  for row in rows:
    num_pad = 0 if pad_id is None else int(np.count_nonzero(row == pad_id))
    num_real = len(row) - num_pad
    if num_real - (min_length - 1) < 1:
      out.append(row)
      continue
    for j in range(num_real - (min_length - 1)):
      out.append(np.concatenate(
          [np.full([j], fill, dtype=np.int64), row[:len(row) - j]]))
  out = np.stack(out) if out else np.zeros([0, rows.shape[1]], np.int64)
  if shuffle:
    out = out[np.random.RandomState(seed).permutation(np.arange(len(out)))]
  return out


# ---------------------------------------------------------------------------
# Dataset metadata
# ---------------------------------------------------------------------------

_REQUIRED_KEYS = {
    PRETRAIN: ("kind", "item_vocab_size", "seq_length", "num_train",
               "num_test", "num_unknown_items", "command"),
    FINETUNE: ("kind", "item_vocab_size", "target_vocab_size",
               "source_length", "num_train", "num_test",
               "target_frequencies", "num_unknown_items", "command"),
}


def shard_file_name(split, index, num_shards):
  """`train.tfrecord` (one shard) or `train-00003-of-00016.tfrecord`."""
  if num_shards <= 1:
    return "%s.tfrecord" % split
  return "%s-%05d-of-%05d.tfrecord" % (split, index, num_shards)


def shard_file_names(split, num_shards):
  """The file names of a split written in `num_shards` shards, in order."""
  return [shard_file_name(split, i, num_shards)
          for i in range(max(num_shards, 1))]


def dataset_paths(data_dir, kind, num_shards=1):
  """{role: absolute path} of the files of a converted dataset.

  With `num_shards` > 1, "train" and "test" are glob patterns matching the
  split's shard files (`train-?????-of-00016.tfrecord`); every reader takes
  a file name, a glob or a list (`resolve_input_files`).
  """
  data_dir = absolute_path(data_dir)
  def split_path(split):
    if num_shards <= 1:
      return os.path.join(data_dir, shard_file_name(split, 0, 1))
    return os.path.join(data_dir, "%s-?????-of-%05d.tfrecord" %
                        (split, num_shards))
  paths = {
      "metadata": os.path.join(data_dir, METADATA_FILE),
      "train": split_path("train"),
      "test": split_path("test"),
      "item_vocab": os.path.join(data_dir, ITEM_VOCAB_FILE),
  }
  if kind == FINETUNE:
    paths["target_vocab"] = os.path.join(data_dir, TARGET_VOCAB_FILE)
  return paths


def read_metadata_json(data_dir):
  """Parses `data_dir/metadata.json` without checking the other files."""
  path = os.path.join(data_dir, METADATA_FILE)
  if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
    raise DatasetError("no %s in %s: not a converted dataset (run "
                       "python -m tfrecord_tools.convert_csv)" %
                       (METADATA_FILE, data_dir))
  try:
    metadata = json.loads(read_text(path))
  except (ValueError, UnicodeDecodeError) as e:
    raise DatasetError("%s is not valid JSON: %s" % (path, e))
  if not isinstance(metadata, dict) or metadata.get("kind") not in KINDS:
    raise DatasetError("%s: 'kind' must be one of %s" % (path, KINDS))
  return metadata


def _first_record(path):
  """The first record of a TFRecord file (bytes), or None when it is empty.

  Reads the framing directly (uint64 length, uint32 CRC, data, uint32 CRC)
  so that it works the same with and without eager execution.
  """
  with tf.io.gfile.GFile(path, "rb") as f:
    header = f.read(12)
    if not header:
      return None
    length = struct.unpack("<Q", header[:8])[0]
    data = f.read(length)
  if len(header) < 12 or len(data) < length:
    raise DatasetError("%s is truncated: not a complete TFRecord file" % path)
  return data


def _check_first_record(path, expected_lengths, meta_path):
  """Checks the first Example's int64 features against the metadata."""
  data = _first_record(path)
  if data is None:
    return
  try:
    example = tf.train.Example.FromString(data)
  except Exception as e:  # protobuf's DecodeError
    raise DatasetError("%s does not hold tf.train.Examples: %s" % (path, e))
  features = example.features.feature
  got = {name: len(features[name].int64_list.value) for name in features}
  if got != expected_lengths:
    raise DatasetError(
        "%s does not match %s: its first record has the int64 features %s, "
        "the metadata expects %s" % (path, meta_path, got, expected_lengths))


def load_metadata(data_dir, kind=None):
  """Reads `metadata.json` and checks the dataset's files against it.

  `kind` ("pretrain" or "finetune"): the kind of dataset the caller needs;
  another kind is a DatasetError saying which was found.

  Checks: the required keys; the TFRecord and vocabulary files exist; each
  vocabulary file parses, has as many entries as the metadata says and the
  recorded SHA-1; `target_frequencies` has one entry per target id with
  entry 0 equal to 0 and its sum equal to num_train + num_test; the first
  record of each TFRecord file has the features and lengths of the metadata.

  Args:
    data_dir: a directory written by `tfrecord_tools.convert_csv`.

  Returns:
    dict: the metadata, plus "paths" ({"train", "test", "item_vocab",
    ["target_vocab"], "metadata"} -> absolute path) and "data_dir".

  Raises:
    DatasetError with a message naming the inconsistent file.
  """
  metadata = read_metadata_json(data_dir)
  if kind is not None and metadata["kind"] != kind:
    raise DatasetError(
        "--data_dir %s holds a %s dataset; this needs --kind=%s data "
        "(python -m tfrecord_tools.convert_csv --kind=%s)" %
        (data_dir, metadata["kind"], kind, kind))
  kind = metadata["kind"]
  meta_path = os.path.join(data_dir, METADATA_FILE)
  missing = [k for k in _REQUIRED_KEYS[kind] if k not in metadata]
  if missing:
    raise DatasetError("%s lacks the keys %s" % (meta_path, missing))
  num_shards = int(metadata.get("num_shards", 1))
  paths = dataset_paths(data_dir, kind, num_shards)
  for role, path in sorted(paths.items()):
    if role in ("train", "test"):
      names = shard_file_names(role, num_shards)
      missing_files = [n for n in names if not tf.io.gfile.exists(
          os.path.join(data_dir, n))]
      if missing_files:
        raise DatasetError("%s lists a %s dataset in %d shard(s), but %s is "
                           "missing" % (meta_path, kind, num_shards,
                                        os.path.join(data_dir,
                                                     missing_files[0])))
    elif not tf.io.gfile.exists(path):
      raise DatasetError("%s lists a %s dataset, but %s is missing" %
                         (meta_path, kind, path))
  vocab_checks = [("item_vocab", "item_vocab_size", "item_vocab_sha1")]
  if kind == FINETUNE:
    vocab_checks.append(
        ("target_vocab", "target_vocab_size", "target_vocab_sha1"))
  for role, size_key, sha_key in vocab_checks:
    vocab = Vocabulary.load(paths[role])
    if len(vocab) != metadata[size_key]:
      raise DatasetError(
          "vocabulary file %s does not match the metadata: it has %d entries "
          "(with %s), %s says %s = %d" %
          (paths[role], len(vocab), UNK_TOKEN, meta_path, size_key,
           metadata[size_key]))
    if sha_key in metadata and vocab.sha1() != metadata[sha_key]:
      raise DatasetError(
          "vocabulary file %s does not match the metadata: its SHA-1 %s is "
          "not %s = %s recorded in %s (the file was changed or replaced)" %
          (paths[role], vocab.sha1(), sha_key, metadata[sha_key], meta_path))
  if kind == FINETUNE:
    freq = metadata["target_frequencies"]
    if len(freq) != metadata["target_vocab_size"]:
      raise DatasetError(
          "%s: target_frequencies has %d entries, target_vocab_size is %d" %
          (meta_path, len(freq), metadata["target_vocab_size"]))
    if freq[0] != 0 or sum(freq) != metadata["num_train"] + metadata[
        "num_test"]:
      raise DatasetError(
          "%s: target_frequencies must have entry 0 = 0 and sum to "
          "num_train + num_test" % meta_path)
  expected = ({"itemseq": metadata["seq_length"]} if kind == PRETRAIN else
              {"source": metadata["source_length"], "target": 1})
  if kind == FINETUNE and has_user_feature(metadata):
    expected["user"] = 1
  for role in ("train", "test"):
    for name in shard_file_names(role, num_shards):
      path = os.path.join(data_dir, name)
      if _first_record(path) is not None:
        _check_first_record(path, expected, meta_path)
        break
  metadata = dict(metadata)
  if kind == FINETUNE:
    metadata.setdefault("task", None)  # None: converted before it was kept
    if metadata["task"] not in TASKS + (None,):
      raise DatasetError("%s: task must be one of %s, got %r" %
                         (meta_path, TASKS, metadata["task"]))
  metadata["paths"] = paths
  metadata["data_dir"] = absolute_path(data_dir)
  return metadata


# ---------------------------------------------------------------------------
# tf.data input functions
# ---------------------------------------------------------------------------


def resolve_input_files(input_files):
  """Expands a file name, glob, comma-separated string or list of those."""
  if isinstance(input_files, str):
    input_files = input_files.split(",")
  files = []
  for pattern in input_files:
    pattern = pattern.strip()
    if not pattern:
      continue
    matched = sorted(tf.io.gfile.glob(pattern))
    if not matched:
      raise DatasetError("no input file matches %s" % pattern)
    files.extend(matched)
  if not files:
    raise DatasetError("no input files given")
  return files


def has_user_feature(metadata):
  """True when a fine-tuning dataset's records carry `user` (version 2)."""
  return metadata.get("format_version", 1) >= 2


def read_finetune_users(input_files):
  """The `user` feature of every record, in file order: int64 [num_rows].

  Records written before format version 2 have no `user`; each row then
  counts as its own user (the row index is returned).
  """
  files = resolve_input_files(input_files)
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(0)  # tf.data asks for one under determinism
    dataset = tf.data.TFRecordDataset(files).batch(65536).map(
        lambda serialized: tf.io.parse_example(serialized, {
            "user": tf.io.FixedLenFeature([1], tf.int64, default_value=[-1])
        })["user"][:, 0])
    next_batch = tf.compat.v1.data.make_one_shot_iterator(
        dataset).get_next()
    chunks = []
    with tf.compat.v1.Session() as session:
      while True:
        try:
          chunks.append(session.run(next_batch))
        except tf.errors.OutOfRangeError:
          break
  users = (np.concatenate(chunks) if chunks else
           np.zeros([0], dtype=np.int64))
  if len(users) and users[0] < 0:
    return np.arange(len(users), dtype=np.int64)
  return users


def shard_files(files, shard):
  """This reader's part of `files`: (files, record_shard or None).

  With at least as many files as readers, reader i of n reads files i,
  i + n, ...: disjoint sets of whole files. With fewer files, every reader
  opens them all and keeps every n-th record (record_shard = (i, n)).

  Args:
    files: the resolved input files.
    shard: None, or (index, count) of this reader among `count`.
  """
  if shard is None or shard[1] <= 1:
    return files, None
  index, count = shard
  if not 0 <= index < count:
    raise ValueError("shard index %d is not in [0, %d)" % (index, count))
  if len(files) >= count:
    return files[index::count], None
  return files, (index, count)


def _records(input_files, is_training, batch_size, drop_remainder, seed,
             shuffle_buffer, num_epochs, row_mask=None, shard=None):
  """Serialized examples batched: shuffle -> repeat -> batch (training).

  `row_mask`, a bool array over the records of `input_files` in file order,
  keeps only the records where it is True (before any shuffle). Several
  training files are read interleaved, in a shuffled order; `shard`
  (index, count) reads this reader's part (`shard_files`).
  """
  files, record_shard = shard_files(resolve_input_files(input_files), shard)
  if is_training and len(files) > 1 and row_mask is None:
    dataset = tf.data.Dataset.from_tensor_slices(files).shuffle(
        len(files), seed=seed, reshuffle_each_iteration=True).interleave(
            tf.data.TFRecordDataset, cycle_length=min(len(files), 4),
            num_parallel_calls=tf.data.AUTOTUNE)
  else:
    dataset = tf.data.TFRecordDataset(files)
  if record_shard is not None:
    dataset = dataset.shard(record_shard[1], record_shard[0])
  if row_mask is not None:
    keep = tf.constant(np.asarray(row_mask, dtype=bool))
    dataset = dataset.enumerate().filter(
        tf.autograph.experimental.do_not_convert(
            lambda index, _: tf.gather(keep, index))).map(
                tf.autograph.experimental.do_not_convert(
                    lambda _, record: record))
  if is_training:
    # Shuffle within a buffer, then repeat so every epoch sees each record.
    dataset = dataset.shuffle(shuffle_buffer, seed=seed,
                              reshuffle_each_iteration=True)
    dataset = dataset.repeat(num_epochs)
  if drop_remainder is None:
    drop_remainder = is_training
  # Batch the serialized strings first: one parse_example per batch is much
  # cheaper than one parse per record.
  return dataset.batch(batch_size, drop_remainder=drop_remainder)


def pretrain_input_fn_builder(input_files, seq_length, batch_size, is_training,
                              seed=None, drop_remainder=None,
                              shuffle_buffer=DEFAULT_SHUFFLE_BUFFER,
                              num_epochs=None,
                              num_parallel_calls=tf.data.AUTOTUNE,
                              shard=None):
  """Returns an `input_fn(params)` over pretraining TFRecords.

  Training: shuffle -> repeat -> batch(drop_remainder=True, static shapes)
  -> parse -> prefetch. Eval (is_training=False): one pass in file order,
  the last partial batch kept.

  Args:
    input_files: TFRecord file(s): a name, a glob, comma-separated, or list.
    seq_length: int, length of the `itemseq` feature (metadata seq_length).
    batch_size: int.
    is_training: bool.
    seed: optional int, shuffle seed.
    drop_remainder: None = `is_training`.
    shuffle_buffer: records held by the shuffle buffer.
    num_epochs: None repeats forever (training only).
    num_parallel_calls: parallelism of the parse map.
    shard: None, or (index, count): read only this reader's part of the
      files (`shard_files`), e.g. one worker of a cluster.

  Returns:
    input_fn(params) -> tf.data.Dataset of {"itemseq": int32 [B, seq_length]}
    (no labels; B is static when drop_remainder). `params` is ignored.
  """
  name_to_features = {
      "itemseq": tf.io.FixedLenFeature([seq_length], tf.int64),
  }

  # Plain graph code: AutoGraph's conversion of it costs start-up time only.
  @tf.autograph.experimental.do_not_convert
  def parse_batch(serialized):
    """[B] serialized -> {"itemseq": int32 [B, seq_length]}."""
    parsed = tf.io.parse_example(serialized, name_to_features)
    return {"itemseq": tf.cast(parsed["itemseq"], tf.int32)}

  def input_fn(params):
    del params  # Estimator passes its params; everything is in the closure.
    dataset = _records(input_files, is_training, batch_size, drop_remainder,
                       seed, shuffle_buffer, num_epochs, shard=shard)
    dataset = dataset.map(parse_batch, num_parallel_calls=num_parallel_calls)
    return dataset.prefetch(tf.data.AUTOTUNE)

  return input_fn


def finetune_rows(source, target, causal, cls_at_start=False):
  """Builds the rows of docs/MODEL.md §1 in the graph.

  Args:
    source: int32 Tensor [B, source_length].
    target: int32 Tensor [B].
    causal: bool, see `example_rows`.
    cls_at_start: causal only, the `[CLS]`-at-start ablation:
      `[0, source..., target]`.

  Returns:
    int32 Tensor [B, source_length + 2] (causal: `[source..., 0, target]`)
    or [B, source_length + 3] (non-causal: `[0, source..., 0, target]`).
  """
  zeros = tf.zeros_like(source[:, :1])
  target = tf.expand_dims(target, 1)
  if causal:
    parts = ([zeros, source, target] if cls_at_start else
             [source, zeros, target])
  else:
    parts = [zeros, source, zeros, target]
  return tf.concat(parts, axis=1)


def finetune_input_fn_builder(input_files, source_length, causal, batch_size,
                              is_training, target_vocab_size, num_negatives,
                              sampler="uniform", target_frequencies=None,
                              rho=0.3, distinct_negatives=False, seed=None,
                              drop_remainder=None,
                              shuffle_buffer=DEFAULT_SHUFFLE_BUFFER,
                              num_epochs=None,
                              lambdafm_exclude_positive=False,
                              row_mask=None, cls_at_start=False,
                              num_parallel_calls=tf.data.AUTOTUNE):
  """Returns an `input_fn(params)` over fine-tuning TFRecords.

  Training: shuffle -> repeat -> batch(drop_remainder) -> parse, build rows
  and draw negatives -> prefetch. Eval: one pass in file order, last
  partial batch kept. Negatives are drawn in the graph with stateless ops
  whose per-batch seeds come from `tf.data.Dataset.random(seed)`, so a
  given `seed` gives the same negatives at any map parallelism.

  Args:
    input_files: TFRecord file(s), see `pretrain_input_fn_builder`.
    source_length: int, metadata source_length.
    causal: bool, row layout (`finetune_rows`).
    batch_size: int.
    is_training: bool.
    target_vocab_size: int, metadata target_vocab_size (including id 0).
    num_negatives: int >= 0, negatives per example (1 for the BCE/BPR
      training loss, 99 for the sampled evaluation).
    sampler: "uniform" (uniform over [1, target_vocab_size) without the
      positive) or "lambdafm" (the static rank-based distribution).
    target_frequencies: list [target_vocab_size], needed by "lambdafm".
    rho: LambdaFM temperature.
    distinct_negatives: uniform sampler only: draw without replacement.
    seed: optional int for the shuffle and the negatives.
    drop_remainder: None = `is_training`.
    shuffle_buffer, num_epochs, num_parallel_calls: see the pretraining one.
    lambdafm_exclude_positive: LambdaFM only; False as the original.
    row_mask: optional bool array over the records of `input_files`: keep
      only these (a validation or few-label subset, `carve_training_rows`).
    cls_at_start: causal rows with the `[CLS]` slot first (`finetune_rows`).

  Returns:
    input_fn(params) -> tf.data.Dataset of dicts:
      "rows": int32 [B, source_length + 2 or + 3],
      "target": int32 [B],
      "negatives": int32 [B, num_negatives] (always present; [B, 0] when
        num_negatives is 0).
  """
  if sampler not in ("uniform", "lambdafm"):
    raise ValueError("sampler must be 'uniform' or 'lambdafm', got %r" %
                     (sampler,))
  if sampler == "lambdafm":
    if target_frequencies is None:
      raise ValueError("sampler='lambdafm' needs target_frequencies")
    if len(target_frequencies) != target_vocab_size:
      raise ValueError("target_frequencies has %d entries, target_vocab_size "
                       "is %d" % (len(target_frequencies), target_vocab_size))
  name_to_features = {
      "source": tf.io.FixedLenFeature([source_length], tf.int64),
      "target": tf.io.FixedLenFeature([1], tf.int64),
  }

  def draw_negatives(target, stateless_seed):
    if sampler == "uniform":
      return sampling.uniform_negatives(
          target, num_negatives, target_vocab_size,
          distinct=distinct_negatives, stateless_seed=stateless_seed)
    return sampling.lambdafm_negatives(
        target, num_negatives, target_frequencies, rho=rho,
        exclude_positive=lambdafm_exclude_positive,
        stateless_seed=stateless_seed)

  @tf.autograph.experimental.do_not_convert
  def parse_batch(serialized, stateless_seed):
    """[B] serialized, [2] seed -> {"rows", "target", "negatives"}."""
    parsed = tf.io.parse_example(serialized, name_to_features)
    source = tf.cast(parsed["source"], tf.int32)
    target = tf.cast(parsed["target"][:, 0], tf.int32)
    return {
        "rows": finetune_rows(source, target, causal, cls_at_start),
        "target": target,
        "negatives": draw_negatives(target, stateless_seed),
    }

  def input_fn(params):
    del params  # Estimator passes its params; everything is in the closure.
    dataset = _records(input_files, is_training, batch_size, drop_remainder,
                       seed, shuffle_buffer, num_epochs, row_mask)
    # One [2] stateless seed per batch, from a seeded random stream.
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    dataset = tf.data.Dataset.zip((dataset, seeds))
    dataset = dataset.map(parse_batch, num_parallel_calls=num_parallel_calls)
    return dataset.prefetch(tf.data.AUTOTUNE)

  return input_fn


def check_id_range(ids, vocab_size, what):
  """`ids` with run-time assertions that every id is in [0, vocab_size).

  An id outside the table is a data error (records written with another
  vocabulary), not something to embed as a silent zero or clip. The check
  is two reductions per batch.

  Args:
    ids: int Tensor of any shape.
    vocab_size: int, rows of the embedding table the ids index.
    what: name used in the message, e.g. "item id".

  Returns:
    `ids`, after the assertions (InvalidArgumentError with `what` and the
    vocabulary size when one fails).
  """
  message = ("%s out of range: every id must be in [0, %d) (the vocabulary "
             "size); the data was written with another vocabulary" %
             (what, vocab_size))
  checks = [
      tf.debugging.assert_non_negative(ids, message=message),
      tf.debugging.assert_less(ids, tf.cast(vocab_size, ids.dtype),
                               message=message),
  ]
  with tf.control_dependencies(checks):
    return tf.identity(ids)
