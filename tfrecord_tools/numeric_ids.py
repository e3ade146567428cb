"""The vectorized path of the streaming converter: pretraining logs of ids.

Real logs name items by decimal ids. When every field of a pretraining
file is a canonical decimal number (digits only, no leading zero, below
ID_LIMIT), the streaming converter counts and maps blocks of lines with
numpy instead of one Python dict operation per item, which is what bounds
it on a large vocabulary. The tokens are the same strings (`str(id)` is the
field), so the vocabulary, the ids and the records are exactly those of the
per-line path (tests/test_streaming.py checks byte equality); any other
file takes the per-line path.
"""
import collections

import numpy as np

ID_LIMIT = 1 << 24      # dense count/lookup tables: 8 bytes per possible id
MAX_FIELDS = 1 << 16    # a token's first appearance is (line << 16) | column
NEVER = np.iinfo(np.int64).max
BLOCK_BYTES = 8 << 20

_COMMA, _NEWLINE, _ZERO, _NINE = ord(","), ord("\n"), ord("0"), ord("9")


def parse_block(lines):
  """(ids int64 [num_fields], fields per line int64 [len(lines)]), or None.

  None unless every line of `lines` (bytes, or str) is `d,d,...,d` with
  each d a canonical decimal below ID_LIMIT: the lines the per-line parser
  reads as the same tokens and for which `str(int(d)) == d`.
  """
  if lines and isinstance(lines[0], str):
    lines = [line.encode("utf-8") for line in lines]
  data = b"\n".join(lines) + b"\n"
  raw = np.frombuffer(data, dtype=np.uint8)
  is_digit = (raw >= _ZERO) & (raw <= _NINE)
  separators = np.flatnonzero(~is_digit)
  if np.any((raw[separators] != _COMMA) & (raw[separators] != _NEWLINE)):
    return None
  starts = np.concatenate([[0], separators[:-1] + 1])
  widths = separators - starts
  if widths.min() == 0 or widths.max() > 8:  # empty field; >= 10**8
    return None
  if np.any((raw[starts] == _ZERO) & (widths > 1)):
    return None  # a leading zero: "007" is not the token "7"
  line_ends = np.flatnonzero(raw[separators] == _NEWLINE)
  fields = np.diff(np.concatenate([[-1], line_ends]))
  if len(fields) != len(lines) or fields.max() >= MAX_FIELDS:
    return None
  ids = np.fromstring(data.replace(b"\n", b","), dtype=np.int64, sep=",")
  if len(ids) != len(widths) or ids.max() >= ID_LIMIT:
    return None
  return ids, fields


def padded_rows(ids, fields, length):
  """int64 [num_lines, length]: each line's ids, right-padded with 0."""
  rows = np.zeros([len(fields), length], dtype=np.int64)
  rows[np.arange(length) < fields[:, None]] = ids
  return rows


class Counts(object):
  """Per-id counts and first appearances of the blocks one worker parsed."""

  def __init__(self):
    self.counts = np.zeros([0], dtype=np.int64)
    self.first = np.zeros([0], dtype=np.int64)

  def _grow(self, size):
    if size > len(self.counts):
      size = max(size, 2 * len(self.counts))
      self.counts = np.concatenate(
          [self.counts, np.zeros([size - len(self.counts)], np.int64)])
      self.first = np.concatenate(
          [self.first, np.full([size - len(self.first)], NEVER, np.int64)])

  def add(self, line_indices, ids, fields):
    """Counts a block: `line_indices` int64 [num_lines] and parse_block's."""
    self._grow(int(ids.max()) + 1)
    counted = np.bincount(ids)
    self.counts[:len(counted)] += counted
    line_starts = np.cumsum(fields) - fields
    columns = np.arange(len(ids)) - np.repeat(line_starts, fields)
    keys = (np.repeat(line_indices, fields) << 16) | columns
    new = self.first[ids] == NEVER
    np.minimum.at(self.first, ids[new], keys[new])

  def as_state(self):
    return {"counts": self.counts, "first": self.first}


def merge(states):
  """The workers' Counts as one Counter {str(id): count}, in order of first
  appearance (what `Vocabulary.fit_counts` takes)."""
  size = max(len(s["counts"]) for s in states)
  counts = np.zeros([size], np.int64)
  first = np.full([size], NEVER, np.int64)
  for state in states:
    n = len(state["counts"])
    counts[:n] += state["counts"]
    first[:n] = np.minimum(first[:n], state["first"])
  present = np.flatnonzero(counts)
  order = present[np.argsort(first[present], kind="stable")]
  return collections.Counter(dict(zip(map(str, order.tolist()),
                                      counts[order].tolist())))


def id_table(vocab, tokens):
  """int32 [max id + 1]: vocabulary id of each decimal id (0: not kept)."""
  raw = np.array([int(t) for t in tokens], dtype=np.int64)
  table = np.zeros([int(raw.max()) + 1 if len(raw) else 1], dtype=np.int32)
  table[raw] = [vocab.lookup(t) for t in tokens]
  return table


def varint_payloads(rows):
  """Protobuf's packed varint encoding of each row of `rows`.

  Args:
    rows: int64 [num_rows, length], values in [0, ID_LIMIT).

  Returns:
    (bytes of all rows' encodings, one after the other; int64 [num_rows + 1]
    offsets: row i is bytes[offsets[i]:offsets[i + 1]]).
  """
  values = rows.reshape([-1])
  sizes = 1 + sum((values >= (1 << bits)).astype(np.int64)
                  for bits in (7, 14, 21))
  starts = np.cumsum(sizes) - sizes
  out = np.empty([int(sizes.sum())], dtype=np.uint8)
  remaining = values.copy()
  for k in range(4):
    here = sizes > k
    byte = (remaining & 0x7F) | np.where(sizes > k + 1, 0x80, 0)
    out[starts[here] + k] = byte[here]
    remaining >>= 7
  offsets = np.concatenate([[0], np.cumsum(sizes.reshape(rows.shape).sum(1))])
  return out.tobytes(), offsets


class ExampleSerializer(object):
  """Serialized one-feature tf.train.Examples of int64 rows, vectorized.

  A record is a prefix that depends only on the payload's length (the
  nested messages' tags and lengths), then the packed varints. The prefix
  of each length is taken from the protobuf library's own serialization of
  the first row of that length (and its payload checked), so the records
  are byte for byte what `tf.train.Example.SerializeToString` writes.
  """

  def __init__(self, name, example_factory):
    self._name = name
    self._example_factory = example_factory
    self._prefixes = {}

  def _prefix(self, row, payload):
    example = self._example_factory()
    example.features.feature[self._name].int64_list.value[:] = row
    serialized = example.SerializeToString()
    if not serialized.endswith(payload):
      raise AssertionError("varint encoding differs from protobuf's")
    return serialized[:len(serialized) - len(payload)]

  def serialize(self, rows):
    """List of serialized Examples, one per row of int64 [n, length]."""
    data, offsets = varint_payloads(rows)
    records = []
    for i, (start, end) in enumerate(zip(offsets[:-1].tolist(),
                                         offsets[1:].tolist())):
      payload = data[start:end]
      prefix = self._prefixes.get(end - start)
      if prefix is None:
        prefix = self._prefixes[end - start] = self._prefix(
            rows[i].tolist(), payload)
      records.append(prefix + payload)
    return records
