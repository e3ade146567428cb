"""CSV -> TFRecord -> input_fn round trips, and the converter's bad inputs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import data_loader
from tests.conftest import (DEMO_FINETUNE_CSV, DEMO_PRETRAIN_CSV,
                            PROJECT_ROOT, require_path)
from tfrecord_tools import common
from tfrecord_tools import convert_csv

UUIDS = ["6cd36130-2d93-4df7", "d17aec63-2878", "e0c81899-a69b", "x_9",
         "don't", "0"]


def synthetic_sequences(num, length, seed):
  """Left-padded token sequences over a small mixed vocabulary."""
  rng = np.random.RandomState(seed)
  tokens = UUIDS[:-1] + [str(i) for i in range(100, 130)]
  sequences = []
  for _ in range(num):
    real = rng.randint(2, length + 1)
    sequences.append(["0"] * (length - real) +
                     list(rng.choice(tokens, size=real)))
  return sequences


def read_all(input_fn):
  """Concatenates every batch of an (eval) input_fn, per feature."""
  batches = list(input_fn({}).as_numpy_iterator())
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def output_files(directory):
  return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def convert_quietly(*args, **kwargs):
  kwargs.setdefault("print_summary", False)
  return convert_csv.convert(*args, **kwargs)


# ---------------------------------------------------------------------------
# Round trips: the TFRecord pipeline gives the rows data_loader builds
# ---------------------------------------------------------------------------


def check_pretrain_round_trip(csv, out, test_fraction):
  meta = convert_quietly("pretrain", csv, out, test_fraction=test_fraction)
  data = data_loader.load_pretrain_csv(csv)
  train, test = data_loader.split_train_test(data.item_ids, test_fraction)
  loaded = data_loader.load_metadata(out)
  assert loaded["item_vocab_size"] == len(data.vocab)
  assert (loaded["num_train"], loaded["num_test"]) == (len(train), len(test))
  assert data_loader.Vocabulary.load(loaded["paths"]["item_vocab"]) == (
      data.vocab)
  for rows, role in ((train, "train"), (test, "test")):
    got = read_all(data_loader.pretrain_input_fn_builder(
        loaded["paths"][role], meta["seq_length"], batch_size=4,
        is_training=False))
    assert got["itemseq"].dtype == np.int32
    np.testing.assert_array_equal(got["itemseq"], rows)
  # Training: static shapes, every row a training row.
  dataset = data_loader.pretrain_input_fn_builder(
      loaded["paths"]["train"], meta["seq_length"], batch_size=4,
      is_training=True, seed=1)({})
  assert dataset.element_spec["itemseq"].shape.as_list() == [
      4, meta["seq_length"]]
  train_set = {tuple(r) for r in train}
  for batch in dataset.take(len(train)).as_numpy_iterator():
    assert all(tuple(r) in train_set for r in batch["itemseq"])
  return meta


def check_finetune_round_trip(pretrain_csv, finetune_csv, out, test_fraction):
  pretrain_dir = out + "_pretrain"
  convert_quietly("pretrain", pretrain_csv, pretrain_dir, test_fraction=0.5)
  vocab_file = os.path.join(pretrain_dir, "item_vocab.txt")
  meta = convert_quietly("finetune", finetune_csv, out, item_vocab=vocab_file,
                         test_fraction=test_fraction)
  loaded = data_loader.load_metadata(out)
  pretrain = data_loader.load_pretrain_csv(pretrain_csv)
  data = data_loader.load_finetune_csv(finetune_csv, pretrain.vocab)
  assert loaded["item_vocab_size"] == len(pretrain.vocab)
  assert loaded["target_vocab_size"] == len(data.target_vocab)
  assert loaded["num_unknown_items"] == data.num_unknown_items
  for causal in (True, False):
    rows = data_loader.build_finetune_rows(data.source_ids, data.target_ids,
                                           causal)
    train, test = data_loader.split_train_test(rows, test_fraction)
    assert (meta["num_train"], meta["num_test"]) == (len(train), len(test))
    assert meta["target_frequencies"] == data_loader.target_frequencies(
        rows[:, -1], meta["target_vocab_size"])
    for expected, role in ((train, "train"), (test, "test")):
      got = read_all(data_loader.finetune_input_fn_builder(
          loaded["paths"][role], meta["source_length"], causal,
          batch_size=3, is_training=False,
          target_vocab_size=meta["target_vocab_size"], num_negatives=2,
          seed=5))
      np.testing.assert_array_equal(got["rows"], expected)
      np.testing.assert_array_equal(got["target"], expected[:, -1])
      assert got["negatives"].shape == (len(expected), 2)
      assert np.all(got["negatives"] != got["target"][:, None])
      assert np.all(got["negatives"] > 0)
      assert np.all(got["negatives"] < meta["target_vocab_size"])
  return meta


def test_pretrain_round_trip_synthetic(tmp_path):
  csv = convert_csv.write_pretrain_csv(str(tmp_path / "p.csv"),
                                       synthetic_sequences(23, 7, seed=1))
  meta = check_pretrain_round_trip(csv, str(tmp_path / "out"), 0.3)
  assert meta["seq_length"] == 7 and meta["num_test"] == int(0.3 * 23)


def test_finetune_round_trip_synthetic(tmp_path):
  pre = synthetic_sequences(20, 6, seed=2)
  sources = synthetic_sequences(15, 6, seed=3)
  sources[0][-1] = "never-in-pretraining"
  rng = np.random.RandomState(4)
  targets = [list(rng.choice(["t1", "t2", "t3", "t-4", "T5"],
                             size=rng.randint(1, 4), replace=False))
             for _ in sources]
  pre_csv = convert_csv.write_pretrain_csv(str(tmp_path / "p.csv"), pre)
  ft_csv = convert_csv.write_finetune_csv(str(tmp_path / "f.csv"), sources,
                                          targets)
  meta = check_finetune_round_trip(pre_csv, ft_csv, str(tmp_path / "ft"),
                                   0.25)
  assert meta["num_unknown_items"] >= 1
  assert meta["target_vocab_size"] == 6


def test_round_trip_on_demo_data(tmp_path):
  pre_csv = require_path(DEMO_PRETRAIN_CSV)
  ft_csv = require_path(DEMO_FINETUNE_CSV)
  meta = check_pretrain_round_trip(pre_csv, str(tmp_path / "pre"), 0.5)
  assert meta["item_vocab_size"] == 175
  meta = check_finetune_round_trip(pre_csv, ft_csv, str(tmp_path / "ft"), 0.9)
  assert (meta["item_vocab_size"], meta["target_vocab_size"]) == (175, 32)
  assert (meta["num_train"], meta["num_test"]) == (5, 42)
  assert meta["num_unknown_items"] == 0


def test_finetune_training_pipeline_static_shapes_and_lambdafm(tmp_path):
  meta = convert_csv.make_finetune_dataset(
      str(tmp_path / "ft"), [[1, 2, 3], [2, 3, 4], [4, 5, 6], [7, 8, 9]],
      [["a", "b"], ["a"], ["c", "a"], ["b", "d"]], test_fraction=0.0)
  assert meta["target_frequencies"] == [0, 3, 2, 1, 1]
  paths = data_loader.load_metadata(str(tmp_path / "ft"))["paths"]
  input_fn = data_loader.finetune_input_fn_builder(
      paths["train"], meta["source_length"], causal=False, batch_size=5,
      is_training=True, target_vocab_size=meta["target_vocab_size"],
      num_negatives=3, sampler="lambdafm",
      target_frequencies=meta["target_frequencies"], seed=7)
  dataset = input_fn({})
  spec = dataset.element_spec
  assert spec["rows"].shape.as_list() == [5, 3 + 3]
  assert spec["negatives"].shape.as_list() == [5, 3]
  first = [b["negatives"] for b in dataset.take(3).as_numpy_iterator()]
  again = [b["negatives"] for b in input_fn({}).take(3).as_numpy_iterator()]
  np.testing.assert_array_equal(first, again)  # seeded: reproducible
  assert np.all(np.concatenate(first) > 0)
  # num_negatives=0 gives an empty [B, 0] "negatives" tensor.
  batch = next(data_loader.finetune_input_fn_builder(
      paths["train"], meta["source_length"], True, 2, False,
      meta["target_vocab_size"], 0)({}).as_numpy_iterator())
  assert batch["negatives"].shape == (2, 0)


def test_subsessions_in_conversion(tmp_path):
  sequences = [["0", "0", "a", "b", "c", "d", "e", "f"],
               ["0", "g", "h", "i", "j", "k", "l", "m"]]
  meta = convert_csv.make_pretrain_dataset(
      str(tmp_path / "p"), sequences, test_fraction=0.0, subsessions=True)
  # 6 real items -> 2 subsessions, 7 -> 3 (down to 5 real items).
  assert (meta["num_sequences"], meta["num_train"]) == (2, 5)
  got = read_all(data_loader.pretrain_input_fn_builder(
      str(tmp_path / "p" / "train.tfrecord"), 8, 10, False))["itemseq"]
  assert got.shape == (5, 8)
  assert sorted(np.count_nonzero(got == meta["pad_token_id"], 1)) == [
      1, 2, 2, 3, 3]


# ---------------------------------------------------------------------------
# Bad input: clear errors, nothing left behind
# ---------------------------------------------------------------------------

BAD_LINES = [
    ("finetune", b"1,2,,3\n4,5,6\n", "line 2: missing the ',,' separator",
     "'4,5,6'"),
    ("pretrain", b"1,2\n\n3,4\n", "line 2: empty sequence", "''"),
    ("finetune", b"1,2,,3\n,,5\n", "line 2: empty source sequence", "',,5'"),
    ("finetune", b"1,2,,3\n4,5,,\n", "line 2: empty target list", "'4,5,,'"),
    ("pretrain", b"1,2\n3,a b\n", "line 2: token 'a b'", "'3,a b'"),
    ("finetune", b"1,2,,3\n4,<5>,,6\n", "line 2: token '<5>'", "'4,<5>,,6'"),
    ("pretrain", b"1,2\n3,\xff\xfe4\n", "line 2: undecodable bytes",
     r"b'3,\xff\xfe4'"),
]


@pytest.mark.parametrize("kind,content,reason,shown", BAD_LINES)
def test_malformed_line_names_file_and_line_and_leaves_nothing(
    tmp_path, kind, content, reason, shown):
  csv = tmp_path / "bad.csv"
  csv.write_bytes(content)
  out = str(tmp_path / "out")
  options = {"refit_source_vocab": True} if kind == "finetune" else {}
  with pytest.raises(data_loader.DataFormatError) as info:
    convert_quietly(kind, str(csv), out, **options)
  message = str(info.value)
  assert message.startswith(str(csv) + ", " + reason), message
  assert shown in message, message
  assert not os.path.exists(out)
  # A pre-existing output directory is left as it was (empty).
  os.makedirs(out)
  with pytest.raises(data_loader.DataFormatError):
    convert_quietly(kind, str(csv), out, **options)
  assert output_files(out) == []


def test_missing_and_empty_input_files(tmp_path):
  out = str(tmp_path / "out")
  with pytest.raises(data_loader.DatasetError,
                     match="input file not found: .*nope.csv"):
    convert_quietly("pretrain", str(tmp_path / "nope.csv"), out)
  empty = tmp_path / "empty.csv"
  empty.write_bytes(b"")
  with pytest.raises(data_loader.DatasetError, match="input file is empty"):
    convert_quietly("pretrain", str(empty), out)
  assert not os.path.exists(out)


def test_output_dir_holding_a_different_dataset(tmp_path):
  out = str(tmp_path / "out")
  first = convert_csv.write_pretrain_csv(str(tmp_path / "a.csv"),
                                         [[1, 2, 3], [3, 4, 5]])
  second = convert_csv.write_pretrain_csv(str(tmp_path / "b.csv"),
                                          [[7, 8], [9, 7]])
  convert_quietly("pretrain", first, out, test_fraction=0.5)
  before = {n: open(os.path.join(out, n), "rb").read()
            for n in output_files(out)}
  with pytest.raises(data_loader.DatasetError,
                     match="already holds a different dataset .*a.csv"):
    convert_quietly("pretrain", second, out, test_fraction=0.5)
  with pytest.raises(data_loader.DatasetError, match="different dataset"):
    convert_quietly("pretrain", first, out, test_fraction=0.2)
  after = {n: open(os.path.join(out, n), "rb").read()
           for n in output_files(out)}
  assert after == before  # untouched, no temporary files
  # The same conversion again is fine; --overwrite replaces.
  convert_quietly("pretrain", first, out, test_fraction=0.5)
  meta = convert_quietly("pretrain", second, out, overwrite=True)
  assert data_loader.load_metadata(out)["seq_length"] == meta["seq_length"]
  assert output_files(out) == sorted(
      ["item_vocab.txt", "metadata.json", "test.tfrecord", "train.tfrecord"])


def test_vocabulary_file_not_matching_metadata(tmp_path):
  pre = str(tmp_path / "pre")
  convert_csv.make_pretrain_dataset(pre, [["a", "b"], ["c", "a"]])
  vocab_file = os.path.join(pre, "item_vocab.txt")
  ft_csv = convert_csv.write_finetune_csv(str(tmp_path / "f.csv"),
                                          [["a", "c"]], [["t"]])
  out = str(tmp_path / "ft")
  with open(vocab_file, "a") as f:
    f.write("extra\n")
  with pytest.raises(data_loader.DatasetError,
                     match=r"item_vocab.txt does not match the metadata: it "
                     r"has 5 entries .* item_vocab_size = 4"):
    data_loader.load_metadata(pre)
  with pytest.raises(data_loader.DatasetError, match="does not match"):
    convert_quietly("finetune", ft_csv, out, item_vocab=vocab_file)
  assert not os.path.exists(out)
  # Same size, other tokens: caught by the recorded SHA-1.
  with open(vocab_file, "w") as f:
    f.write("<UNK>\nc\nb\na\n")
  with pytest.raises(data_loader.DatasetError, match="its SHA-1"):
    data_loader.load_metadata(pre)
  # TFRecords of another dataset (other sequence length).
  vocab_file_text = "<UNK>\na\nb\nc\n"
  with open(vocab_file, "w") as f:
    f.write(vocab_file_text)
  data_loader.load_metadata(pre)
  other = str(tmp_path / "other")
  convert_csv.make_pretrain_dataset(other, [["a", "b", "c"], ["c", "a", "b"]])
  os.replace(os.path.join(other, "train.tfrecord"),
             os.path.join(pre, "train.tfrecord"))
  with pytest.raises(data_loader.DatasetError,
                     match=r"train.tfrecord does not match .*\{'itemseq': 3\}"
                     r", the metadata expects \{'itemseq': 2\}"):
    data_loader.load_metadata(pre)
  # A metadata file that lists a missing file.
  os.remove(os.path.join(pre, "test.tfrecord"))
  with pytest.raises(data_loader.DatasetError, match="test.tfrecord is "
                     "missing"):
    data_loader.load_metadata(pre)


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
  csv = convert_csv.write_pretrain_csv(str(tmp_path / "a.csv"),
                                       [[1, 2], [2, 3], [3, 4]])
  real_write = common.write_examples
  calls = []

  def failing_write(path, *args, **kwargs):
    calls.append(path)
    real_write(path, *args, **kwargs)
    if len(calls) == 2:
      raise IOError("disk full")

  monkeypatch.setattr(common, "write_examples", failing_write)
  out = str(tmp_path / "out")
  with pytest.raises(IOError, match="disk full"):
    convert_quietly("pretrain", csv, out)
  assert all(os.path.basename(p).startswith(".") for p in calls)
  assert not os.path.exists(out)


def test_finetune_needs_a_vocabulary_choice(tmp_path):
  csv = convert_csv.write_finetune_csv(str(tmp_path / "f.csv"), [[1]], [[2]])
  with pytest.raises(ValueError, match="needs item_vocab"):
    convert_quietly("finetune", csv, str(tmp_path / "o"))


def test_refit_source_vocab_reports_scrambled_ids(tmp_path):
  pre = str(tmp_path / "pre")
  convert_csv.make_pretrain_dataset(pre, [["a", "b", "c"]])
  csv = convert_csv.write_finetune_csv(str(tmp_path / "f.csv"),
                                       [["c", "b"], ["a", "b"]],
                                       [["t"], ["u"]])
  vocab_file = os.path.join(pre, "item_vocab.txt")
  fixed = convert_quietly("finetune", csv, str(tmp_path / "fixed"),
                          item_vocab=vocab_file, test_fraction=0.0)
  original = convert_quietly("finetune", csv, str(tmp_path / "orig"),
                             item_vocab=vocab_file, refit_source_vocab=True,
                             test_fraction=0.0)
  assert original["num_ids_differing_from_item_vocab"] == 2  # a and c
  assert fixed["item_vocab_sha1"] != original["item_vocab_sha1"]
  assert open(os.path.join(str(tmp_path / "fixed"), "item_vocab.txt")).read(
  ) == open(vocab_file).read()


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def run_cli(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run(
      [sys.executable, "-m", "tfrecord_tools.convert_csv"] + list(args),
      cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_command_line_success_and_error(tmp_path):
  csv = convert_csv.write_pretrain_csv(str(tmp_path / "a.csv"),
                                       [[1, 2, 3], [3, 4, 5], [5, 6, 7]])
  out = str(tmp_path / "out")
  result = run_cli("--kind=pretrain", "--input_csv=" + csv,
                   "--output_dir=" + out, "--test_fraction=0.34")
  assert result.returncode == 0, result.stderr
  assert "item vocabulary: 8 ids" in result.stdout
  meta = json.load(open(os.path.join(out, "metadata.json")))
  assert meta["command"].startswith(
      "python -m tfrecord_tools.convert_csv --kind=pretrain")
  assert (meta["num_train"], meta["num_test"]) == (2, 1)
  bad = tmp_path / "bad.csv"
  bad.write_text("1,2,,3\n4,5\n")
  result = run_cli("--kind=finetune", "--input_csv=" + str(bad),
                   "--output_dir=" + str(tmp_path / "o2"),
                   "--refit_source_vocab")
  assert result.returncode == 1
  assert "error: %s, line 2: missing the ',,'" % bad in result.stderr
  assert "'4,5'" in result.stderr
  assert not os.path.exists(str(tmp_path / "o2"))


def test_vocabulary_control_maps_rare_items_to_unk(tmp_path):
  # a: 4 times, b: 3, c: 2, d and e: once; "0" is the pad token.
  sequences = [["0", "a", "b", "c"], ["a", "d", "a", "b"],
               ["0", "c", "a", "b"], ["0", "0", "e", "0"]]
  meta = convert_csv.make_pretrain_dataset(str(tmp_path / "min"), sequences,
                                           test_fraction=0, min_item_count=2)
  vocab = data_loader.Vocabulary.load(str(tmp_path / "min" / "item_vocab.txt"))
  assert vocab.tokens == ["<UNK>", "0", "a", "b", "c"]  # first appearance
  assert (meta["num_unknown_items"], meta["num_unknown_item_types"]) == (2, 2)
  assert meta["min_item_count"] == 2
  # A cap keeps the most frequent (ties: the earlier), the pad token always.
  meta = convert_csv.make_pretrain_dataset(str(tmp_path / "cap"), sequences,
                                           test_fraction=0, max_vocab_size=4)
  vocab = data_loader.Vocabulary.load(str(tmp_path / "cap" / "item_vocab.txt"))
  assert vocab.tokens == ["<UNK>", "0", "a", "b"]
  assert (meta["num_unknown_items"], meta["num_unknown_item_types"]) == (4, 3)
  np.testing.assert_array_equal(vocab.transform([["0", "a", "c", "e"]], 4),
                                [[1, 2, 0, 0]])
  with pytest.raises(ValueError, match="apply to pretrain only"):
    convert_csv.make_finetune_dataset(str(tmp_path / "ft"), [["a"]], [["x"]],
                                      min_item_count=2)
