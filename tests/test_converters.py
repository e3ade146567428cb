"""Tests of the MovieLens and Amazon converters (small files, then real)."""
import gzip
import json
import os

import pytest

import data_loader
from tests import test_pretrain
from tests.conftest import SHARED_DATA_DIR, require_path
from tfrecord_tools import amazon
from tfrecord_tools import convert_csv
from tfrecord_tools import movielens


def lines(path):
  with open(path) as f:
    return f.read().splitlines()


def write_gz(path, text):
  with gzip.open(str(path), "wt") as f:
    f.write(text)
  return str(path)


# ---------------------------------------------------------------------------
# MovieLens
# ---------------------------------------------------------------------------

# User 1: not time-sorted in the file, ties at t=100 -> movie id order.
ML1M_RATINGS = """1::30::5::300
1::20::4::100
1::10::3::100
1::40::2::200
1::50::1::400
2::11::5::50
2::12::5::60
3::13::4::70
3::14::4::80
3::15::1::90
"""
ML1M_USERS = """1::F::1::10::48067
2::M::56::16::70072
3::M::25::15::55117
"""


def write_ml1m(tmp_path):
  """(ratings.dat.gz path, users.dat path) of the small ML-1M files."""
  users = tmp_path / "users.dat"
  users.write_text(ML1M_USERS)
  return write_gz(tmp_path / "ratings.dat.gz", ML1M_RATINGS), users


def test_movielens_1m_format(tmp_path):
  ratings, users = write_ml1m(tmp_path)
  out = str(tmp_path / "out")
  stats = movielens.convert_movielens(ratings, str(users), out,
                                      max_seq_length=4, min_history=3)
  # User 1 in (timestamp, movie id) order: 10 20 40 30 50, last 4 kept.
  # User 2 (2 ratings) is dropped; user 3 is left-padded with "0".
  assert lines(os.path.join(out, "pretrain.csv")) == [
      "20,40,30,50", "0,13,14,15"]
  assert lines(os.path.join(out, "finetune_gender.csv")) == [
      "20,40,30,50,,F", "0,13,14,15,,M"]
  assert lines(os.path.join(out, "finetune_age.csv")) == [
      "20,40,30,50,,1", "0,13,14,15,,25"]
  assert stats["num_users"] == 2 and stats["num_users_dropped"] == 1
  assert stats["num_items"] == 7 and stats["num_interactions_kept"] == 7
  assert stats["gender_counts"] == {"F": 1, "M": 1}
  assert json.load(open(os.path.join(out, "stats.json"))) == stats
  # Liked-only (rating >= 4): user 3 keeps 2 ratings and is dropped.
  liked = movielens.convert_movielens(ratings, str(users),
                                      str(tmp_path / "liked"), 4, 2, 4)
  assert lines(os.path.join(str(tmp_path / "liked"), "pretrain.csv")) == [
      "0,0,20,30", "0,0,11,12", "0,0,13,14"]
  assert liked["num_users"] == 3


def test_movielens_100k_format_and_age_buckets(tmp_path):
  ratings = tmp_path / "u.data"
  ratings.write_text("7\t5\t3\t20\n7\t6\t3\t10\n8\t1\t4\t5\n9\t2\t4\t5\n")
  users = tmp_path / "u.user"
  users.write_text("7|17|M|student|1\n8|24|F|other|2\n9|56|M|none|3\n")
  out = str(tmp_path / "out")
  movielens.convert_movielens(str(ratings), str(users), out,
                              max_seq_length=3, min_history=1)
  assert lines(os.path.join(out, "finetune_age.csv")) == [
      "0,6,5,,1", "0,0,1,,18", "0,0,2,,56"]
  assert [movielens.age_bucket(a) for a in (1, 18, 24, 25, 44, 45, 50, 55,
                                            56, 73)] == [
                                                1, 18, 18, 25, 35, 45, 50, 50,
                                                56, 56]


def test_movielens_csvs_convert_to_tfrecords(tmp_path):
  ratings, users = write_ml1m(tmp_path)
  csvs = str(tmp_path / "csv")
  movielens.convert_movielens(ratings, str(users), csvs, 5, 2)
  pre = convert_csv.convert("pretrain", os.path.join(csvs, "pretrain.csv"),
                            str(tmp_path / "pre"), test_fraction=0.0,
                            print_summary=False)
  fine = convert_csv.convert(
      "finetune", os.path.join(csvs, "finetune_gender.csv"),
      str(tmp_path / "gender"),
      item_vocab=str(tmp_path / "pre" / "item_vocab.txt"), test_fraction=0.0,
      print_summary=False)
  # 10 movies + the pad token "0" + <UNK>.
  assert pre["item_vocab_size"] == 12 and fine["item_vocab_size"] == 12
  assert fine["target_vocab_size"] == 3  # <UNK>, F, M
  assert fine["target_frequencies"] == [0, 1, 2]
  assert fine["num_unknown_items"] == 0
  data_loader.load_metadata(str(tmp_path / "gender"))


def test_earlier_windows_end_stride_apart_and_keep_min_items():
  items = [str(i) for i in range(1, 12)]  # 11 items
  assert movielens.earlier_windows(items, 4, 3, 2) == [
      ["5", "6", "7", "8"], ["2", "3", "4", "5"], ["1", "2"]]
  assert movielens.earlier_windows(items, 4, 3, 3) == [
      ["5", "6", "7", "8"], ["2", "3", "4", "5"]]
  assert movielens.earlier_windows(items[:3], 4, 3, 1) == []
  with pytest.raises(ValueError):
    movielens.earlier_windows(items, 4, 0, 1)


def test_pretrain_windows_join_the_training_split_only(tmp_path):
  ratings, users = write_ml1m(tmp_path)
  csvs = str(tmp_path / "csv")
  stats = movielens.convert_movielens(ratings, str(users), csvs,
                                      max_seq_length=3, min_history=2,
                                      pretrain_window_stride=1)
  # User 1 (10 20 40 30 50): last 3 in pretrain.csv; windows ending 1, 2,
  # 3 items earlier keep >= 2 items. User 2 (11 12) has none; user 3
  # (13 14 15) one.
  assert lines(os.path.join(csvs, "pretrain.csv")) == [
      "40,30,50", "0,11,12", "13,14,15"]
  assert lines(os.path.join(csvs, movielens.WINDOWS_CSV)) == [
      "20,40,30", "10,20,40", "0,10,20", "0,13,14"]
  assert stats["num_pretrain_windows"] == 4
  assert lines(os.path.join(csvs, "finetune_gender.csv"))[0] == "40,30,50,,F"
  out = str(tmp_path / "pre")
  metadata = convert_csv.convert(
      "pretrain", os.path.join(csvs, "pretrain.csv"), out, test_fraction=0.34,
      train_only_csv=os.path.join(csvs, movielens.WINDOWS_CSV),
      print_summary=False)
  vocab = data_loader.Vocabulary.load(os.path.join(out, "item_vocab.txt"))
  def ids(line):
    return tuple(vocab.transform([line.split(",")], 3)[0])
  paths = data_loader.load_metadata(out)["paths"]
  test = [tuple(r) for r in test_pretrain.read_itemseq(paths["test"], 3)]
  train = [tuple(r) for r in test_pretrain.read_itemseq(paths["train"], 3)]
  users_lines = [ids(l) for l in lines(os.path.join(csvs, "pretrain.csv"))]
  window_lines = [ids(l) for l in
                  lines(os.path.join(csvs, movielens.WINDOWS_CSV))]
  # One held-out user line; every window and the other two users train.
  assert len(test) == 1 and test[0] in users_lines
  assert sorted(train) == sorted([l for l in users_lines if l != test[0]] +
                                 window_lines)
  assert metadata["num_train_only_sequences"] == 4
  assert metadata["num_train"] == 6 and metadata["num_test"] == 1
  # Item 10 is only in a window, and has an id.
  assert "10" in vocab
  with pytest.raises(ValueError, match="train_only_csv"):
    convert_csv.convert("pretrain", os.path.join(csvs, "pretrain.csv"),
                        str(tmp_path / "hash"), split_method="hash",
                        train_only_csv=os.path.join(csvs,
                                                    movielens.WINDOWS_CSV))


def test_movielens_bad_line_leaves_nothing(tmp_path):
  ratings = tmp_path / "ratings.dat"
  ratings.write_text("1::2::3::4\n1::x::3::4\n")
  users = tmp_path / "users.dat"
  users.write_text(ML1M_USERS)
  out = str(tmp_path / "out")
  with pytest.raises(data_loader.DataFormatError,
                     match=r"ratings.dat, line 2: item 'x' is not an integer"):
    movielens.convert_movielens(str(ratings), str(users), out)
  assert not os.path.exists(out)
  ratings.write_text("1::2::3::4\n")
  users.write_text("1::X::1::10::48067\n")
  with pytest.raises(data_loader.DataFormatError,
                     match=r"users.dat, line 1: gender 'X'"):
    movielens.convert_movielens(str(ratings), str(users), out)
  assert not os.path.exists(out)


def test_movielens_refuses_to_overwrite(tmp_path):
  ratings = write_gz(tmp_path / "r.gz", ML1M_RATINGS)
  users = tmp_path / "users.dat"
  users.write_text(ML1M_USERS)
  out = str(tmp_path / "out")
  movielens.convert_movielens(ratings, str(users), out)
  with pytest.raises(ValueError, match="already holds pretrain.csv"):
    movielens.convert_movielens(ratings, str(users), out)
  movielens.convert_movielens(ratings, str(users), out, overwrite=True)


# ---------------------------------------------------------------------------
# Amazon two-domain (ABXI format)
# ---------------------------------------------------------------------------

ITEM_MAP = {"A1": [1, 0], "A2": [2, 0], "A3": [3, 0], "A4": [4, 0],
            "B1": [5, 1], "B2": [6, 1], "B3": [7, 1]}
# User 0: ties at t=10 keep file order (2 before 1); item 5 appears twice.
INTERACTIONS = ("0 2|10 1|10 5|10 3|20 5|30 6|40 4|50\n"
                "1 1|5 7|6\n"
                "2 3|1 4|2 1|3\n")


def write_amazon(tmp_path):
  interactions = write_gz(tmp_path / "x_50_preprocessed.txt.gz", INTERACTIONS)
  item_map = write_gz(tmp_path / "map_item_50.txt.gz", json.dumps(ITEM_MAP))
  return interactions, item_map


def test_amazon_two_domain_converter(tmp_path):
  interactions, item_map = write_amazon(tmp_path)
  out = str(tmp_path / "out")
  stats = amazon.convert_amazon(interactions, item_map, out,
                                max_seq_length=3, min_history=2)
  # User 1 has one domain-A item (< 2): dropped. User 2 has no B items.
  assert lines(os.path.join(out, "pretrain.csv")) == ["1,3,4", "3,4,1"]
  assert lines(os.path.join(out, "finetune_coldstart.csv")) == ["1,3,4,,5,6"]
  assert stats["num_pretrain_users"] == 2
  assert stats["num_finetune_users"] == 1
  assert stats["num_users_dropped_short_history"] == 1
  assert stats["num_finetune_examples"] == 2
  # Item 2 is cut by max_seq_length: 3 domain-A items remain.
  assert stats["num_domain_a_items"] == 3 and stats["num_domain_b_items"] == 2
  amazon.convert_amazon(interactions, item_map, str(tmp_path / "o2"),
                        max_seq_length=5, min_history=1, max_targets=1)
  assert lines(os.path.join(str(tmp_path / "o2"), "pretrain.csv")) == [
      "0,2,1,3,4", "0,0,0,0,1", "0,0,3,4,1"]
  assert lines(os.path.join(str(tmp_path / "o2"),
                            "finetune_coldstart.csv")) == [
                                "0,2,1,3,4,,5", "0,0,0,0,1,,7"]


def test_amazon_bad_inputs(tmp_path):
  interactions, item_map = write_amazon(tmp_path)
  bad = write_gz(tmp_path / "bad.txt.gz", "0 1|10 2|x\n")
  out = str(tmp_path / "out")
  with pytest.raises(data_loader.DataFormatError,
                     match=r"bad.txt.gz, line 1: '2\|x' is not item\|timestamp"):
    amazon.convert_amazon(bad, item_map, out)
  unknown = write_gz(tmp_path / "unknown.txt.gz", "0 1|10 99|11\n")
  with pytest.raises(data_loader.DatasetError, match="item 99 of user 0"):
    amazon.convert_amazon(unknown, item_map, out)
  assert not os.path.exists(out)


# ---------------------------------------------------------------------------
# Real files in shared data (skipped when absent)
# ---------------------------------------------------------------------------


def test_real_movielens_100k_end_to_end(tmp_path):
  root = require_path(os.path.join(SHARED_DATA_DIR, "movielens-100k"))
  stats = movielens.convert_movielens(
      os.path.join(root, "u.data.gz"), os.path.join(root, "u.user"),
      str(tmp_path / "csv"), max_seq_length=50, min_history=5)
  assert stats["num_ratings_read"] == 100000
  assert stats["num_users"] == 943
  assert stats["gender_counts"] == {"F": 273, "M": 670}
  assert stats["age_counts"] == {"1": 36, "18": 198, "25": 310, "35": 194,
                                 "45": 80, "50": 73, "56": 52}
  pre = convert_csv.convert(
      "pretrain", str(tmp_path / "csv" / "pretrain.csv"),
      str(tmp_path / "pre"), test_fraction=0.1, print_summary=False)
  assert pre["item_vocab_size"] == stats["num_items"] + 2  # "0" and <UNK>
  assert (pre["num_train"], pre["num_test"]) == (849, 94)
  age = convert_csv.convert(
      "finetune", str(tmp_path / "csv" / "finetune_age.csv"),
      str(tmp_path / "age"), item_vocab=str(tmp_path / "pre" /
                                            "item_vocab.txt"),
      test_fraction=0.2, print_summary=False)
  assert age["target_vocab_size"] == 8 and age["num_unknown_items"] == 0
  assert sorted(age["target_frequencies"]) == [0, 36, 52, 73, 80, 194, 198,
                                               310]


def test_real_movielens_1m(tmp_path):
  root = require_path(os.path.join(SHARED_DATA_DIR, "movielens-1m"))
  stats = movielens.convert_movielens(
      os.path.join(root, "ratings.dat.gz"), os.path.join(root, "users.dat"),
      str(tmp_path / "csv"), max_seq_length=50, min_history=5)
  assert stats["num_ratings_read"] == 1000209
  assert stats["num_users"] == 6040
  assert stats["gender_counts"] == {"F": 1709, "M": 4331}
  assert stats["age_counts"] == {"1": 222, "18": 1103, "25": 2096,
                                 "35": 1193, "45": 550, "50": 496, "56": 380}
  assert stats["sequence_length"]["min"] == 20
  assert stats["sequence_length"]["max"] == 50
  first = lines(str(tmp_path / "csv" / "pretrain.csv"))[0].split(",")
  assert len(first) == 50


def test_real_amazon_afk(tmp_path):
  root = require_path(os.path.join(SHARED_DATA_DIR, "amazon-cdsr-abxi",
                                   "afk"))
  stats = amazon.convert_amazon(
      os.path.join(root, "afk_50_preprocessed.txt.gz"),
      os.path.join(root, "map_item_50.txt.gz"), str(tmp_path / "csv"),
      max_seq_length=50, min_history=5)
  # SOURCE.md: 7,144 users, 11,837 A items / 83,663 A interactions,
  # 16,258 B items / 89,885 B interactions, at least 5 per domain.
  assert stats["num_pretrain_users"] == 7144
  assert stats["num_finetune_users"] == 7144
  assert stats["num_domain_a_items"] == 11837
  assert stats["num_domain_a_interactions_kept"] == 83663
  assert stats["num_domain_b_items"] == 16258
  assert stats["num_finetune_examples"] == 89885
  assert stats["sequence_length"]["min"] == 5
