"""Tests of the in-memory half of data_loader.py (CSV, vocabulary, rows)."""
import numpy as np
import pytest
import tensorflow as tf

import data_loader
from tests.conftest import (CLOZE_CHECKPOINT, DEMO_FINETUNE_CSV,
                            DEMO_PRETRAIN_CSV, PRETRAIN_CHECKPOINT,
                            require_path)


def _write(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def test_token_regex_keeps_uuids_and_rejects_multi_token_fields():
  uuid = "6cd36130-2d93-4df7-8b37-278c2c64ae59"
  assert data_loader.split_fields(uuid + ", don't,x_1", "sequence") == [
      uuid, "don't", "x_1"]
  # VocabularyProcessor's regex splits "AB12" into "AB", "12": an error here.
  assert data_loader.TOKEN_RE.findall("AB12") == ["AB", "12"]
  for bad in ("AB12", "a b", "x;y", "<x>"):
    with pytest.raises(data_loader.DataFormatError, match="cannot be parsed"):
      data_loader.split_fields("1," + bad, "sequence", "f.csv", 3)


def test_vocabulary_first_appearance_unk_and_padding():
  vocab = data_loader.Vocabulary().fit([["b", "a", "b"], ["a", "c", "0"]])
  assert vocab.tokens == ["<UNK>", "b", "a", "c", "0"]
  assert len(vocab) == 5
  assert vocab.lookup("c") == 3 and vocab.lookup("zzz") == 0
  ids = vocab.transform([["a"], ["c", "b", "a", "0"], ["zzz", "b"]], 3)
  np.testing.assert_array_equal(ids, [[2, 0, 0], [3, 1, 2], [0, 1, 0]])
  assert ids.dtype == np.int64
  assert vocab.count_unknown([["zzz", "a", "zzz", "q"]]) == (3, 2)


def test_vocabulary_save_load_round_trip(tmp_path):
  vocab = data_loader.Vocabulary(["x-1", "y", "0"])
  path = str(tmp_path / "vocab.txt")
  vocab.save(path)
  assert open(path).read() == "<UNK>\nx-1\ny\n0\n"
  loaded = data_loader.Vocabulary.load(path)
  assert loaded == vocab and loaded.sha1() == vocab.sha1()
  assert [p.name for p in tmp_path.iterdir()] == ["vocab.txt"]


def test_vocabulary_load_rejects_bad_files(tmp_path):
  with pytest.raises(data_loader.DataFormatError, match="must start with"):
    data_loader.Vocabulary.load(_write(tmp_path, "a.txt", "x\ny\n"))
  with pytest.raises(data_loader.DataFormatError,
                     match=r"line 4: duplicate token 'x'"):
    data_loader.Vocabulary.load(_write(tmp_path, "b.txt", "<UNK>\nx\ny\nx\n"))
  with pytest.raises(data_loader.DatasetError, match="empty"):
    data_loader.Vocabulary.load(_write(tmp_path, "c.txt", ""))


def test_demo_vocabulary_matches_checkpoints_and_first_appearance():
  csv = require_path(DEMO_PRETRAIN_CSV)
  data = data_loader.load_pretrain_csv(csv)
  # Independent count: ids by first appearance over the whole file.
  first_seen = []
  for line in open(csv):
    for token in line.strip().split(","):
      if token not in first_seen:
        first_seen.append(token)
  assert data.vocab.tokens == ["<UNK>"] + first_seen
  assert len(data.vocab) == 175
  for checkpoint in (PRETRAIN_CHECKPOINT, CLOZE_CHECKPOINT):
    require_path(checkpoint + ".index")
    shapes = tf.train.load_checkpoint(checkpoint).get_variable_to_shape_map()
    assert shapes["allitem_embeddings"] == [175, 64]
  # The pad token "0" is an ordinary token with its own non-zero id.
  assert data.vocab.lookup("0") == first_seen.index("0") + 1
  assert data.item_ids.shape == (30, 9)
  first = open(csv).readline().strip().split(",")
  np.testing.assert_array_equal(data.item_ids[0],
                                [data.vocab.lookup(t) for t in first])


def test_demo_finetune_rows_and_pretraining_vocabulary():
  pretrain = data_loader.load_pretrain_csv(require_path(DEMO_PRETRAIN_CSV))
  csv = require_path(DEMO_FINETUNE_CSV)
  mapped = data_loader.load_finetune_csv(csv, pretrain.vocab)
  refit = data_loader.load_finetune_csv(csv)
  assert len(mapped.target_vocab) == 32
  assert mapped.num_unknown_items == 0
  # The demo files list the items in the same order: both agree.
  assert refit.item_vocab == pretrain.vocab
  np.testing.assert_array_equal(mapped.source_ids, refit.source_ids)
  rows = data_loader.build_finetune_rows(mapped.source_ids, mapped.target_ids,
                                         causal=True)
  assert rows.shape == (47, 11)
  assert np.all(rows[:, 9] == 0) and np.all(rows[:, 10] > 0)
  non_causal = data_loader.build_finetune_rows(
      mapped.source_ids, mapped.target_ids, causal=False)
  np.testing.assert_array_equal(non_causal[:, 1:], rows)
  assert np.all(non_causal[:, 0] == 0)


def test_pretraining_vocabulary_fixes_scrambled_ids(tmp_path):
  pretrain = data_loader.Vocabulary().fit([["a", "b", "c"]])
  csv = _write(tmp_path, "ft.csv", "c,b,x,,t1\nb,c,,t2,t1\n")
  mapped = data_loader.load_finetune_csv(csv, pretrain)
  np.testing.assert_array_equal(mapped.source_ids, [[3, 2, 0], [2, 3, 0]])
  assert (mapped.num_unknown_items, mapped.num_unknown_item_types) == (1, 1)
  refit = data_loader.load_finetune_csv(csv)  # the original's behaviour
  np.testing.assert_array_equal(refit.source_ids, [[1, 2, 3], [2, 1, 0]])


def test_build_finetune_rows_both_layouts():
  source_ids = [[5, 6, 7], [8, 9, 0]]
  target_ids = [[1, 2], [3, 0]]
  np.testing.assert_array_equal(
      data_loader.build_finetune_rows(source_ids, target_ids, causal=True),
      [[5, 6, 7, 0, 1], [5, 6, 7, 0, 2], [8, 9, 0, 0, 3]])
  np.testing.assert_array_equal(
      data_loader.build_finetune_rows(source_ids, target_ids, causal=False),
      [[0, 5, 6, 7, 0, 1], [0, 5, 6, 7, 0, 2], [0, 8, 9, 0, 0, 3]])
  sources, targets = data_loader.finetune_examples(source_ids, target_ids)
  assert data_loader.target_frequencies(targets, 5) == [0, 1, 1, 1, 0]


def test_split_matches_the_original_seed_10_permutation():
  rows = np.arange(47 * 2).reshape([47, 2])
  train, test = data_loader.split_train_test(rows, 0.9)
  # The original, with global numpy state.
  np.random.seed(10)
  shuffled = rows[np.random.permutation(np.arange(47))]
  dev_sample_index = -1 * int(0.9 * float(47))
  np.testing.assert_array_equal(train, shuffled[:dev_sample_index])
  np.testing.assert_array_equal(test, shuffled[dev_sample_index:])
  assert (len(train), len(test)) == (5, 42)
  train, test = data_loader.split_train_test(rows, 0.0)
  assert (len(train), len(test)) == (47, 0)
  with pytest.raises(ValueError, match="test_fraction"):
    data_loader.split_train_test(rows, 1.0)


def test_generate_subsessions():
  pad = 9
  rows = np.array([[9, 9, 1, 2, 3, 4, 5, 6], [9, 9, 9, 9, 1, 2, 3, 4]])
  out = data_loader.generate_subsessions(rows, pad, min_length=5,
                                         shuffle=False)
  np.testing.assert_array_equal(out, [
      [9, 9, 1, 2, 3, 4, 5, 6],
      [9, 9, 9, 1, 2, 3, 4, 5],  # first row, down to 5 real items
      [9, 9, 9, 9, 1, 2, 3, 4],  # 4 real items: kept once as it is
  ])
  shuffled = data_loader.generate_subsessions(rows, pad, min_length=5)
  perm = np.random.RandomState(10).permutation(3)
  np.testing.assert_array_equal(shuffled, out[perm])
  # Without a pad token in the vocabulary nothing counts as padding.
  assert len(data_loader.generate_subsessions(rows, None, 5)) == 8


def test_parse_lines_report_file_line_and_text():
  assert data_loader.parse_finetune_line("1,2,,a,b") == (["1", "2"],
                                                         ["a", "b"])
  cases = [
      ("1,2,3", data_loader.parse_finetune_line, "missing the ',,'"),
      (",,5", data_loader.parse_finetune_line, "empty source sequence"),
      ("1,2,,", data_loader.parse_finetune_line, "empty target list"),
      ("1,,2,,3", data_loader.parse_finetune_line, "more than one"),
      ("1,2,,3", data_loader.parse_pretrain_line, "unexpected ',,'"),
      ("", data_loader.parse_pretrain_line, "empty sequence"),
      ("1,,", data_loader.parse_finetune_line, "empty target list"),
      ("1,2,", data_loader.parse_pretrain_line, "empty token"),
  ]
  for line, parse, reason in cases:
    with pytest.raises(data_loader.DataFormatError) as info:
      parse(line, "data/x.csv", 12)
    message = str(info.value)
    assert message.startswith("data/x.csv, line 12: "), message
    assert reason in message and repr(line) in message, message


def test_gzip_files_are_read_transparently(tmp_path):
  import gzip
  path = tmp_path / "seq.csv.gz"
  with gzip.open(str(path), "wt") as f:
    f.write("a,b\nc,a\n")
  assert data_loader.read_pretrain_csv(str(path)) == [["a", "b"], ["c", "a"]]


def _write_shards(tmp_path, num_files, rows_per_file):
  paths = []
  for f in range(num_files):
    path = str(tmp_path / ("train-%05d-of-%05d.tfrecord" % (f, num_files)))
    with tf.io.TFRecordWriter(path) as writer:
      for r in range(rows_per_file):
        value = f * 1000 + r
        writer.write(tf.train.Example(features=tf.train.Features(feature={
            "itemseq": tf.train.Feature(int64_list=tf.train.Int64List(
                value=[value, value]))})).SerializeToString())
    paths.append(path)
  return paths


def _read_all(files, shard, is_training):
  input_fn = data_loader.pretrain_input_fn_builder(
      files, 2, 4, is_training, seed=1, num_epochs=1, shard=shard,
      drop_remainder=False)
  return sorted(int(v) for batch in input_fn({})
                for v in batch["itemseq"][:, 0].numpy())


@pytest.mark.parametrize("num_files", [4, 1])
def test_trainers_read_disjoint_shards_that_cover_the_data(tmp_path,
                                                           num_files):
  paths = _write_shards(tmp_path, num_files, 6)
  everything = _read_all(str(tmp_path / "train-*.tfrecord"), None, True)
  assert len(everything) == 6 * num_files
  parts = [_read_all(str(tmp_path / "train-*.tfrecord"), (i, 3), True)
           for i in range(3)]
  assert sorted(sum(parts, [])) == everything  # disjoint, and all of it
  assert all(parts)
  files, record_shard = data_loader.shard_files(paths, (1, 3))
  if num_files == 4:  # whole files: 1 and 4 of 0..3
    assert (files, record_shard) == ([paths[1]], None)
  else:  # one file: every third record
    assert (files, record_shard) == (paths, (1, 3))


def test_training_shard_of_each_cluster_task():
  import training_utils  # pylint: disable=g-import-not-at-top
  cluster = {"chief": ["a:1"], "worker": ["b:1", "c:1"], "ps": ["d:1"]}
  assert training_utils.training_shard(("chief", 0, cluster)) == (0, 3)
  assert training_utils.training_shard(("worker", 1, cluster)) == (2, 3)
  assert training_utils.training_shard(("ps", 0, cluster)) is None
  assert training_utils.training_shard(("evaluator", 0, cluster)) is None
  assert training_utils.training_shard(None) is None
