r"""MovieLens (ML-1M, ML-100K) -> pretraining and user-profile CSVs.

Reads the GroupLens files as they are (gzipped or not):
  ML-1M:   ratings.dat `UserID::MovieID::Rating::Timestamp`,
           users.dat   `UserID::Gender::Age::Occupation::Zip-code`
  ML-100K: u.data      `user<TAB>item<TAB>rating<TAB>timestamp`,
           u.user      `user|age|gender|occupation|zip`
(the format is recognised per file from its separator).

Writes into --output_dir (each through a temporary name):
  pretrain.csv         one user a line: the user's movies in time order,
                       the most recent --max_seq_length kept, left-padded
                       with --pad_token ("0") to that length (docs/MODEL.md §1).
  finetune_gender.csv  the same sequence, `,,`, then F or M.
  finetune_age.csv     the same sequence, `,,`, then the ML-1M age bucket
                       code: 1 (<18), 18 (18-24), 25 (25-34), 35 (35-44),
                       45 (45-49), 50 (50-55), 56 (56+). ML-100K ages in
                       years are mapped to these buckets.
  stats.json           the statistics printed at the end.
  pretrain_windows.csv with --pretrain_window_stride=S > 0 only: the earlier
                       windows of each user's whole history, in the same
                       format: the --max_seq_length items ending S, 2S, ...
                       items before the last, while a window keeps at least
                       --min_history items. Meant for the training split
                       only (`convert_csv --train_only_csv`), so that a
                       held-out line stays one per user.

Time order: ratings are sorted by (timestamp, movie id). MovieLens has many
ratings in the same second by the same user (52.9% in ML-1M), and
ratings.dat is not time-sorted within a user, so equal timestamps are
broken by the smaller movie id first: deterministic whatever the file order.

Users are ordered by user id. A user with fewer than --min_history ratings
(after --min_rating) is dropped from every file.

  python -m tfrecord_tools.movielens \
      --ratings=../shared/data/movielens-1m/ratings.dat.gz \
      --users=../shared/data/movielens-1m/users.dat \
      --output_dir=data/ml-1m --max_seq_length=50 --min_history=5
"""
import collections
import os

from absl import app
from absl import flags
from absl import logging

import data_loader
from tfrecord_tools import common

PRETRAIN_CSV = "pretrain.csv"
GENDER_CSV = "finetune_gender.csv"
AGE_CSV = "finetune_age.csv"
STATS_JSON = "stats.json"
WINDOWS_CSV = "pretrain_windows.csv"
OUTPUTS = (PRETRAIN_CSV, GENDER_CSV, AGE_CSV, STATS_JSON)

AGE_BUCKETS = (1, 18, 25, 35, 45, 50, 56)  # ML-1M codes, lower bounds
GENDERS = ("F", "M")

Rating = collections.namedtuple("Rating", ["timestamp", "item", "rating"])
User = collections.namedtuple("User", ["gender", "age"])


def age_bucket(years):
  """ML-1M age code (the bucket's lower bound, 1 for under 18) of an age."""
  code = AGE_BUCKETS[0]
  for lower in AGE_BUCKETS[1:]:
    if years >= lower:
      code = lower
  return code


def _split(text, path, line_number):
  """Fields of a ratings/users line, by '::', tab or '|'."""
  for separator in ("::", "\t", "|"):
    if separator in text:
      return [field.strip() for field in text.split(separator)]
  raise data_loader.DataFormatError(
      path, line_number, "no '::', tab or '|' separator: not a MovieLens "
      "ratings/users line", text)


def _int(value, what, path, line_number, text):
  try:
    return int(value)
  except ValueError:
    raise data_loader.DataFormatError(
        path, line_number, "%s %r is not an integer" % (what, value), text)


def read_ratings(path, progress_fn=None):
  """{user id: [Rating, ...] in file order} from ratings.dat or u.data."""
  ratings = collections.defaultdict(list)
  for n, text in data_loader.iter_text_lines(path, progress_fn):
    fields = _split(text, path, n)
    if len(fields) != 4:
      raise data_loader.DataFormatError(
          path, n, "expected 4 fields user, item, rating, timestamp, got %d"
          % len(fields), text)
    user, item, rating, timestamp = [
        _int(v, w, path, n, text)
        for v, w in zip(fields, ("user", "item", "rating", "timestamp"))]
    ratings[user].append(Rating(timestamp, item, rating))
  return ratings


def read_users(path):
  """{user id: User(gender "F"/"M", age bucket code)} from users.dat/u.user."""
  users = {}
  for n, text in data_loader.iter_text_lines(path):
    fields = _split(text, path, n)
    if len(fields) != 5:
      raise data_loader.DataFormatError(
          path, n, "expected 5 fields, got %d" % len(fields), text)
    user = _int(fields[0], "user", path, n, text)
    if "::" in text:  # ML-1M: UserID::Gender::Age::Occupation::Zip
      gender, age = fields[1], _int(fields[2], "age", path, n, text)
      if age not in AGE_BUCKETS:
        raise data_loader.DataFormatError(
            path, n, "age code %d is not one of %s" % (age, AGE_BUCKETS),
            text)
    else:  # ML-100K: user|age|gender|occupation|zip, age in years
      gender = fields[2]
      age = age_bucket(_int(fields[1], "age", path, n, text))
    if gender not in GENDERS:
      raise data_loader.DataFormatError(
          path, n, "gender %r is not F or M" % gender, text)
    if user in users:
      raise data_loader.DataFormatError(path, n, "duplicate user %d" % user,
                                        text)
    users[user] = User(gender, age)
  return users


def user_sequences(ratings, min_history=5, min_rating=0):
  """{user: [movie ids in time order]}, users by id, short users dropped.

  Ratings below `min_rating` are left out first; then a user with fewer
  than `min_history` ratings is dropped. Order: (timestamp, movie id).
  """
  sequences = collections.OrderedDict()
  for user in sorted(ratings):
    kept = sorted((r.timestamp, r.item) for r in ratings[user]
                  if r.rating >= min_rating)
    if len(kept) >= max(min_history, 1):
      sequences[user] = [item for _, item in kept]
  return sequences


def earlier_windows(items, max_seq_length, stride, min_items):
  """The windows of `items` that end `stride`, 2 `stride`, ... items before
  its end, each its last `max_seq_length` items, while one keeps at least
  `min_items` items; most recent first."""
  if stride <= 0 or max_seq_length <= 0:
    raise ValueError("stride and max_seq_length must be > 0, got %d and %d"
                     % (stride, max_seq_length))
  ends = range(len(items) - stride, max(min_items, 1) - 1, -stride)
  return [items[max(end - max_seq_length, 0):end] for end in ends]


def convert_movielens(ratings_path, users_path, output_dir, max_seq_length=50,
                      min_history=5, min_rating=0, pad_token="0",
                      overwrite=False, pretrain_window_stride=0):
  """Writes the three CSVs and stats.json (and with `pretrain_window_stride`,
  pretrain_windows.csv); returns the statistics dict."""
  if pretrain_window_stride and max_seq_length <= 0:
    raise ValueError("pretrain_window_stride needs max_seq_length > 0")
  outputs = OUTPUTS + ((WINDOWS_CSV,) if pretrain_window_stride else ())
  common.check_csv_outputs(output_dir, outputs, overwrite)
  progress = common.ProgressLogger("reading %s" % ratings_path)
  ratings = read_ratings(ratings_path, progress.lines)
  users = read_users(users_path)
  sequences = user_sequences(ratings, min_history, min_rating)
  if pad_token and any(str(i) == pad_token for s in sequences.values()
                       for i in s):
    raise ValueError("pad token %r is also a movie id" % pad_token)
  no_profile = [u for u in sequences if u not in users]
  if no_profile:
    logging.warning("%d users have ratings but no users-file entry; they are "
                    "left out of the fine-tuning files", len(no_profile))
  gender_counts = collections.Counter()
  age_counts = collections.Counter()
  items = set()
  lengths = []
  num_windows = 0
  with common.AtomicOutputs(output_dir) as out:
    if pretrain_window_stride:
      with open(out.path(WINDOWS_CSV), "w", encoding="utf-8") as windows:
        for movie_ids in sequences.values():
          for window in earlier_windows([str(i) for i in movie_ids],
                                        max_seq_length,
                                        pretrain_window_stride, min_history):
            items.update(window)
            windows.write(",".join(common.pad_sequence(
                window, max_seq_length, pad_token)) + "\n")
            num_windows += 1
    with open(out.path(PRETRAIN_CSV), "w", encoding="utf-8") as pre, \
        open(out.path(GENDER_CSV), "w", encoding="utf-8") as gender_csv, \
        open(out.path(AGE_CSV), "w", encoding="utf-8") as age_csv:
      for user, movie_ids in sequences.items():
        kept = [str(i) for i in movie_ids]
        kept = kept[-max_seq_length:] if max_seq_length > 0 else kept
        items.update(kept)
        lengths.append(len(kept))
        line = ",".join(common.pad_sequence(kept, max_seq_length, pad_token))
        pre.write(line + "\n")
        if user in users:
          profile = users[user]
          gender_csv.write("%s,,%s\n" % (line, profile.gender))
          age_csv.write("%s,,%d\n" % (line, profile.age))
          gender_counts[profile.gender] += 1
          age_counts[str(profile.age)] += 1
    stats = {
        "ratings_file": os.path.abspath(ratings_path),
        "users_file": os.path.abspath(users_path),
        "num_ratings_read": sum(len(r) for r in ratings.values()),
        "num_users_read": len(ratings),
        "num_users": len(sequences),
        "num_users_dropped": len(ratings) - len(sequences),
        "num_interactions_kept": sum(lengths),
        "num_items": len(items),
        "sequence_length": common.length_stats(lengths),
        "max_seq_length": max_seq_length,
        "min_history": min_history,
        "min_rating": min_rating,
        "pad_token": pad_token,
        "pretrain_window_stride": pretrain_window_stride,
        "num_pretrain_windows": num_windows,
        "num_finetune_users": sum(gender_counts.values()),
        "gender_counts": dict(sorted(gender_counts.items())),
        "age_counts": dict(sorted(age_counts.items(), key=lambda kv: int(
            kv[0]))),
        "tie_break": "(timestamp, movie id)",
    }
    common.write_json(out.path(STATS_JSON), stats)
  return stats


def define_flags():
  flags.DEFINE_string("ratings", None, "ratings.dat or u.data (.gz is fine).")
  flags.DEFINE_string("users", None, "users.dat or u.user.")
  flags.DEFINE_integer("max_seq_length", 50,
                       "Keep the most recent N items; 0 keeps all (no "
                       "padding).")
  flags.DEFINE_integer("min_history", 5,
                       "Drop users with fewer ratings than this.")
  flags.DEFINE_integer("pretrain_window_stride", 0,
                       "With S > 0, also write pretrain_windows.csv: the "
                       "earlier windows of each user's whole history, S "
                       "items apart (for convert_csv --train_only_csv).")
  flags.DEFINE_integer("min_rating", 0,
                       "Keep ratings >= this (0: all, 4: liked only).")
  common.define_csv_output_flags()


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  stats = common.call_with_flags(convert_movielens, ratings_path="ratings",
                                 users_path="users")
  print("Wrote %s, %s, %s into %s" % (PRETRAIN_CSV, GENDER_CSV, AGE_CSV,
                                      os.path.abspath(FLAGS.output_dir)))
  print("  %d users (%d dropped: fewer than %d ratings), %d items, %d "
        "interactions kept" % (stats["num_users"], stats["num_users_dropped"],
                               stats["min_history"], stats["num_items"],
                               stats["num_interactions_kept"]))
  print("  sequence length (before padding): %s" % stats["sequence_length"])
  if stats["pretrain_window_stride"]:
    print("  %s: %d earlier windows (stride %d)" % (
        WINDOWS_CSV, stats["num_pretrain_windows"],
        stats["pretrain_window_stride"]))
  print("  gender: %s; age buckets: %s" % (stats["gender_counts"],
                                           stats["age_counts"]))


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["ratings", "users", "output_dir"])
  app.run(main)
