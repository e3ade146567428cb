"""The streaming converter (`convert_csv --split_method=hash`): the same
vocabulary and examples as the whole-file converter, each line's split and
shard from its index, any number of worker processes, gzip and several
input files, errors by file and line, and sharded datasets that train."""
import gzip
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import data_loader
import nextitnet_pretrain as pretrain
from tfrecord_tools import convert_csv
from tfrecord_tools import numeric_ids
from tfrecord_tools import streaming

SEED = 10


def _sequences(num_lines, seed=0, vocab=60):
  """Zipf-ish item lists of varied length (some shorter than the longest)."""
  rng = np.random.default_rng(seed)
  return [list(rng.zipf(1.5, rng.integers(3, 12)) % vocab + 1)
          for _ in range(num_lines)]


def _write_finetune(path, num_lines, seed=1, gz=False):
  rng = np.random.default_rng(seed)
  lines = []
  for source in _sequences(num_lines, seed):
    targets = rng.integers(0, 40, rng.integers(1, 4))
    lines.append(",".join(map(str, source)) + ",," +
                 ",".join("t%d" % t for t in targets) + "\n")
  opener = gzip.open if gz else open
  with opener(path, "wt") as f:
    f.writelines(lines)
  return path


def _records(pattern, names):
  """{name: [[ints], ...]} of every record of the files of `pattern`."""
  out = {name: [] for name in names}
  for path in data_loader.resolve_input_files(pattern):
    for record in tf.compat.v1.io.tf_record_iterator(path):
      features = tf.train.Example.FromString(record).features.feature
      for name in names:
        out[name].append(list(features[name].int64_list.value))
  return out


def _files(directory):
  return sorted(n for n in os.listdir(directory)
                if n.endswith((".tfrecord", ".txt")))


def test_split_unit_is_uniform_and_fixed_by_seed_and_keys():
  values = np.array([streaming.split_unit(SEED, i) for i in range(20000)])
  assert 0.0 <= values.min() and values.max() < 1.0
  assert abs(np.mean(values < 0.1) - 0.1) < 0.01
  assert abs(values.mean() - 0.5) < 0.01
  assert streaming.split_unit(SEED, 7) == streaming.split_unit(SEED, 7)
  assert streaming.split_unit(SEED, 7) != streaming.split_unit(SEED + 1, 7)
  assert streaming.split_unit(SEED, 7, 0) != streaming.split_unit(SEED, 7, 1)


def test_first_appearance_merge_equals_one_reader():
  lines = _sequences(300, seed=3)
  parts = [streaming._FirstAppearance() for _ in range(3)]  # pylint: disable=protected-access
  for index, tokens in enumerate(lines):
    parts[index % 3].add(index, [str(t) for t in tokens])
  merged = streaming.merge_first_appearance(parts)
  one = data_loader.Vocabulary().fit([[str(t) for t in s] for s in lines])
  assert ["<UNK>"] + list(merged) == one.tokens
  flat = [str(t) for s in lines for t in s]
  assert all(merged[t] == flat.count(t) for t in merged)


def test_pretrain_hash_split_same_vocabulary_and_rows_line_by_line(tmp_path):
  sequences = _sequences(400)
  csv = convert_csv.write_pretrain_csv(str(tmp_path / "p.csv"), sequences)
  options = dict(test_fraction=0.25, min_item_count=2, max_vocab_size=40,
                 print_summary=False)
  whole = convert_csv.convert("pretrain", csv, str(tmp_path / "whole"),
                              **options)
  hashed = convert_csv.convert("pretrain", csv, str(tmp_path / "hash"),
                               split_method="hash", num_shards=3,
                               num_workers=1, **options)
  vocab = data_loader.Vocabulary.load(str(tmp_path / "whole/item_vocab.txt"))
  assert data_loader.Vocabulary.load(
      str(tmp_path / "hash/item_vocab.txt")) == vocab
  for key in ("item_vocab_size", "item_vocab_sha1", "seq_length",
              "num_sequences", "num_unknown_items", "num_unknown_item_types",
              "pad_token_id"):
    assert hashed[key] == whole[key], key
  assert hashed["num_shards"] == 3 and hashed["split_method"] == "hash"
  # Line i is in shard i % 3 of the split its hash decides, in line order.
  rows = vocab.transform([[str(t) for t in s] for s in sequences],
                         whole["seq_length"]).tolist()
  is_test = [streaming.split_unit(SEED, i) < 0.25 for i in range(len(rows))]
  for split, wanted in (("train", False), ("test", True)):
    for shard in range(3):
      name = data_loader.shard_file_name(split, shard, 3)
      got = _records(str(tmp_path / "hash" / name), ["itemseq"])["itemseq"]
      assert got == [rows[i] for i in range(shard, len(rows), 3)
                     if is_test[i] == wanted], (split, shard)
  assert hashed["num_test"] == sum(is_test)
  assert hashed["num_train"] + hashed["num_test"] == len(rows)
  # The whole-file converter holds the same rows, in its own split.
  both = _records(str(tmp_path / "whole/*.tfrecord"), ["itemseq"])["itemseq"]
  assert sorted(both) == sorted(rows)
  metadata = data_loader.load_metadata(str(tmp_path / "hash"))
  assert len(data_loader.resolve_input_files(metadata["paths"]["train"])) == 3


def test_workers_gzip_and_row_split_do_not_change_the_output(tmp_path):
  plain = _write_finetune(str(tmp_path / "f.csv"), 500)
  packed = _write_finetune(str(tmp_path / "f.csv.gz"), 500, gz=True)
  options = dict(refit_source_vocab=True, split_by="row", test_fraction=0.3,
                 split_method="hash", num_shards=4, print_summary=False)
  one = convert_csv.convert("finetune", plain, str(tmp_path / "one"),
                            num_workers=1, **options)
  two = convert_csv.convert("finetune", packed, str(tmp_path / "two"),
                            num_workers=2, **options)
  assert _files(str(tmp_path / "one")) == _files(str(tmp_path / "two"))
  for name in _files(str(tmp_path / "one")):
    with open(str(tmp_path / "one" / name), "rb") as a, open(
        str(tmp_path / "two" / name), "rb") as b:
      assert a.read() == b.read(), name
  differ = {"input_csv", "fingerprint", "command"}
  assert {k: v for k, v in one.items() if k not in differ} == {
      k: v for k, v in two.items() if k not in differ}
  # A row split: each (user, target) row by its own hash; users can be on
  # both sides.
  train = _records(str(tmp_path / "one/train-*"), ["user", "target"])
  test = _records(str(tmp_path / "one/test-*"), ["user", "target"])
  assert set(map(tuple, train["user"])) & set(map(tuple, test["user"]))
  assert one["num_train"] + one["num_test"] == one["num_examples"]
  assert sum(one["train_target_frequencies"]) == one["num_train"]
  assert np.bincount([t[0] for t in train["target"]],
                     minlength=one["target_vocab_size"]).tolist() == (
                         one["train_target_frequencies"])


def test_user_split_is_user_disjoint_and_decided_by_the_users_hash(tmp_path):
  csv = _write_finetune(str(tmp_path / "f.csv"), 600)
  metadata = convert_csv.convert(
      "finetune", csv, str(tmp_path / "out"), refit_source_vocab=True,
      split_by="user", test_fraction=0.2, split_method="hash", num_shards=2,
      num_workers=2, print_summary=False)
  users = {split: {u[0] for u in _records(
      str(tmp_path / ("out/%s-*" % split)), ["user"])["user"]}
           for split in ("train", "test")}
  assert not users["train"] & users["test"]
  assert users["train"] | users["test"] == set(range(600))
  assert users["test"] == {u for u in range(600)
                           if streaming.split_unit(SEED, u) < 0.2}
  assert metadata["num_train_users"] == len(users["train"])
  assert metadata["num_test_users"] == len(users["test"])
  # Shard s of each split holds the users u with u % 2 == s.
  for shard in range(2):
    name = data_loader.shard_file_name("train", shard, 2)
    got = _records(str(tmp_path / "out" / name), ["user"])["user"]
    assert {u[0] % 2 for u in got} == {shard}
  data_loader.load_metadata(str(tmp_path / "out"))


def test_several_input_files_are_one_file(tmp_path):
  sequences = _sequences(90, seed=5)
  convert_csv.write_pretrain_csv(str(tmp_path / "part-0.csv"), sequences[:40])
  convert_csv.write_pretrain_csv(str(tmp_path / "part-1.csv"), sequences[40:])
  joined = convert_csv.write_pretrain_csv(str(tmp_path / "all.csv"),
                                          sequences)
  for split_method in ("hash", "permutation"):
    options = dict(split_method=split_method, num_shards=2, num_workers=2,
                   print_summary=False)
    convert_csv.convert("pretrain", str(tmp_path / "part-*.csv"),
                        str(tmp_path / ("parts_" + split_method)), **options)
    convert_csv.convert("pretrain", joined,
                        str(tmp_path / ("joined_" + split_method)), **options)
    for name in _files(str(tmp_path / ("joined_" + split_method))):
      with open(str(tmp_path / ("parts_" + split_method) / name), "rb") as a, \
          open(str(tmp_path / ("joined_" + split_method) / name), "rb") as b:
        assert a.read() == b.read(), (split_method, name)


def test_first_malformed_line_is_named_and_nothing_is_left(tmp_path):
  good = ",".join(str(i) for i in range(1, 9))
  with open(str(tmp_path / "part-0.csv"), "w") as f:
    f.write("\n".join([good] * 6 + ["1,2,x y,4"] + [good] * 5) + "\n")
  with open(str(tmp_path / "part-1.csv"), "w") as f:
    f.write("\n".join([good] * 2 + ["1,,2"] + [good] * 5) + "\n")
  out = str(tmp_path / "out")
  with pytest.raises(data_loader.DataFormatError) as raised:
    convert_csv.convert("pretrain", str(tmp_path / "part-*.csv"), out,
                        split_method="hash", num_workers=2,
                        print_summary=False)
  message = str(raised.value)
  assert "part-0.csv, line 7:" in message and "'x y'" in message, message
  assert not os.path.exists(out)


def test_subsessions_stream_per_training_line(tmp_path):
  sequences = [[0, 0, 1, 2, 3, 4, 5, 6, 7], [0, 0, 0, 0, 5, 6, 7, 8, 9],
               [1, 2, 3, 4, 5, 6, 7, 8, 9]]
  csv = convert_csv.write_pretrain_csv(str(tmp_path / "p.csv"), sequences)
  whole = convert_csv.convert("pretrain", csv, str(tmp_path / "whole"),
                              test_fraction=0.0, subsessions=True,
                              print_summary=False)
  hashed = convert_csv.convert("pretrain", csv, str(tmp_path / "hash"),
                               test_fraction=0.0, subsessions=True,
                               split_method="hash", print_summary=False)
  assert hashed["num_train"] == whole["num_train"] == 3 + 1 + 5
  assert sorted(_records(str(tmp_path / "hash/train.tfrecord"),
                         ["itemseq"])["itemseq"]) == sorted(
                             _records(str(tmp_path / "whole/train.tfrecord"),
                                      ["itemseq"])["itemseq"])


def test_a_sharded_dataset_trains_and_evaluates_every_test_row(tmp_path):
  csv = convert_csv.write_pretrain_csv(str(tmp_path / "p.csv"),
                                       _sequences(120, seed=7))
  data_dir = str(tmp_path / "data")
  metadata = convert_csv.convert("pretrain", csv, data_dir, test_fraction=0.2,
                                 split_method="hash", num_shards=3,
                                 num_workers=1, print_summary=False)
  metrics = pretrain.run(pretrain.default_options(
      data_dir=data_dir, output_dir=str(tmp_path / "model"), channels=8,
      dilations=[1, 2], preset="demo", num_train_steps=4,
      train_batch_size=8, eval_batch_size=16))
  # Every test row of the three shards is ranked but those ending in
  # padding (id 0: shorter lines are right-padded).
  rows = _records(os.path.join(data_dir, "test-*"), ["itemseq"])["itemseq"]
  assert len(rows) == metadata["num_test"]
  assert metrics["num_examples"] == sum(1 for r in rows if r[-1] != 0) > 0
  # A shard that goes missing is named before anything runs.
  os.remove(os.path.join(data_dir, data_loader.shard_file_name("test", 1, 3)))
  with pytest.raises(data_loader.DatasetError, match="test-00001-of-00003"):
    data_loader.load_metadata(data_dir)
  shutil.rmtree(data_dir)


def test_vector_split_units_equal_the_scalar_ones():
  keys = list(range(1000)) + [2**40 + 3, 2**62 - 1]
  assert streaming.split_units(SEED, keys).tolist() == [
      streaming.split_unit(SEED, k) for k in keys]


@pytest.mark.parametrize("texts, ids, fields", [
    (["1,2,3", "0,0,45"], [1, 2, 3, 0, 0, 45], [3, 3]),
    (["7"], [7], [1]),
    (["007,1"], None, None),        # "007" is not the token "7"
    (["1,,2"], None, None),         # an empty field
    (["1,2", ""], None, None),      # a blank line
    (["1, 2"], None, None),         # spaces: the per-line parser strips them
    (["12a,3"], None, None),
    (["\u0663,1"], None, None),     # a non-ASCII digit
    (["123456789,1"], None, None),  # beyond the dense tables
])
def test_numeric_block_parsing_takes_only_canonical_ids(texts, ids, fields):
  parsed = numeric_ids.parse_block(texts)
  if ids is None:
    assert parsed is None
  else:
    assert parsed[0].tolist() == ids and parsed[1].tolist() == fields


def test_numeric_and_per_line_paths_write_the_same_bytes(tmp_path,
                                                         monkeypatch):
  sequences = _sequences(700, seed=9, vocab=300)
  csv = convert_csv.write_pretrain_csv(str(tmp_path / "p.csv"), sequences)
  with open(csv, "rb") as f, gzip.open(str(tmp_path / "p.csv.gz"), "wb") as g:
    g.write(f.read())
  options = dict(split_method="hash", num_shards=4, min_item_count=2,
                 subsessions=True, print_summary=False)
  vectorized = convert_csv.convert("pretrain", csv, str(tmp_path / "vector"),
                                   num_workers=2, **options)
  convert_csv.convert("pretrain", str(tmp_path / "p.csv.gz"),
                      str(tmp_path / "gzip"), num_workers=2, **options)
  monkeypatch.setattr(numeric_ids, "parse_block", lambda lines: None)
  per_line = convert_csv.convert("pretrain", csv, str(tmp_path / "line"),
                                 num_workers=1, **options)
  vectorized.pop("command")
  per_line.pop("command")  # names the output_dir
  assert vectorized == per_line
  names = _files(str(tmp_path / "line"))
  assert len(names) == 9
  for other in ("vector", "gzip"):
    assert _files(str(tmp_path / other)) == names
    for name in names:
      with open(str(tmp_path / other / name), "rb") as a, open(
          str(tmp_path / "line" / name), "rb") as b:
        assert a.read() == b.read(), (other, name)


def test_two_trainers_under_tf_config_read_disjoint_shards_covering_train(
    tmp_path):
  import training_utils  # pylint: disable=g-import-not-at-top
  sequences = [[i, i + 1, i + 2] for i in range(1, 301)]  # distinct rows
  csv = convert_csv.write_pretrain_csv(str(tmp_path / "p.csv"), sequences)
  metadata = convert_csv.convert("pretrain", csv, str(tmp_path / "data"),
                                 test_fraction=0.1, split_method="hash",
                                 num_shards=4, print_summary=False)
  paths = data_loader.load_metadata(str(tmp_path / "data"))["paths"]
  everything = _records(paths["train"], ["itemseq"])["itemseq"]
  assert len(everything) == metadata["num_train"]
  cluster = {"chief": ["a:1"], "worker": ["b:1"], "ps": ["c:1"]}
  parts = []
  for task in (("chief", 0, cluster), ("worker", 0, cluster)):
    input_fn = data_loader.pretrain_input_fn_builder(
        paths["train"], metadata["seq_length"], 7, True, seed=1,
        num_epochs=1, shard=training_utils.training_shard(task),
        drop_remainder=False)
    parts.append([row for batch in input_fn({})
                  for row in batch["itemseq"].numpy().tolist()])
  assert all(parts)
  assert not set(map(tuple, parts[0])) & set(map(tuple, parts[1]))
  assert sorted(parts[0] + parts[1]) == sorted(everything)
