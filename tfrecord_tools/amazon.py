r"""Two-domain Amazon sequences (ABXI format) -> PeterRec cold-start CSVs.

Input (`../shared/data/amazon-cdsr-abxi/<pair>/`, gzipped or not):
  <pair>_50_preprocessed.txt  one user a line: `uid item|unix_ts item|ts ...`,
                              domain-A and domain-B items interleaved.
  map_item_50.txt             JSON {ASIN: [item_id, domain]}; domain 0 = A,
                              1 = B.

Writes into --output_dir (each through a temporary name):
  pretrain.csv            per user, the domain-A items in time order, the
                          most recent --max_seq_length kept, left-padded with
                          --pad_token ("0") to that length.
  finetune_coldstart.csv  the same domain-A sequence, `,,`, then the user's
                          domain-B items: cold-start targets never seen in
                          pretraining (first occurrence of each, in time
                          order; --max_targets keeps the first N).
  stats.json              the statistics printed at the end.

Time order: a stable sort by timestamp, so items with the same timestamp
(day resolution, ties are common) keep their order in the file.
Users with fewer than --min_history domain-A items are dropped from both
files; users with fewer than --min_targets domain-B items from the
fine-tuning file.

  python -m tfrecord_tools.amazon \
      --interactions=../shared/data/amazon-cdsr-abxi/afk/afk_50_preprocessed.txt.gz \
      --item_map=../shared/data/amazon-cdsr-abxi/afk/map_item_50.txt.gz \
      --output_dir=data/afk --max_seq_length=50 --min_history=5
"""
import collections
import json
import os

from absl import app
from absl import flags

import data_loader
from tfrecord_tools import common

PRETRAIN_CSV = "pretrain.csv"
FINETUNE_CSV = "finetune_coldstart.csv"
STATS_JSON = "stats.json"
OUTPUTS = (PRETRAIN_CSV, FINETUNE_CSV, STATS_JSON)

Event = collections.namedtuple("Event", ["timestamp", "item"])


def read_item_domains(path):
  """{item id (str): domain (int)} from the JSON {ASIN: [item_id, domain]}."""
  text = "\n".join(t for _, t in data_loader.iter_text_lines(path))
  try:
    mapping = json.loads(text)
  except ValueError as e:
    raise data_loader.DatasetError("%s is not valid JSON: %s" % (path, e))
  domains = {}
  for asin, value in mapping.items():
    if not (isinstance(value, list) and len(value) == 2):
      raise data_loader.DatasetError(
          "%s: entry %r should be [item_id, domain], got %r" %
          (path, asin, value))
    domains[str(value[0])] = int(value[1])
  return domains


def read_user_events(path, progress_fn=None):
  """[(uid str, [Event, ...] in file order)] from the interactions file."""
  users = []
  for n, text in data_loader.iter_text_lines(path, progress_fn):
    fields = text.split()
    if not fields:
      raise data_loader.DataFormatError(path, n, "empty line", text)
    if len(fields) < 2:
      raise data_loader.DataFormatError(path, n, "user without items", text)
    events = []
    for field in fields[1:]:
      item, sep, timestamp = field.partition("|")
      if not sep or not item or not timestamp.isdigit():
        raise data_loader.DataFormatError(
            path, n, "%r is not item|timestamp" % field, text)
      events.append(Event(int(timestamp), item))
    users.append((fields[0], events))
  return users


def convert_amazon(interactions_path, item_map_path, output_dir,
                   max_seq_length=50, min_history=5, min_targets=1,
                   max_targets=0, domain_a=0, domain_b=1, pad_token="0",
                   overwrite=False):
  """Writes pretrain.csv, finetune_coldstart.csv and stats.json.

  Returns:
    the statistics dict.
  """
  common.check_csv_outputs(output_dir, OUTPUTS, overwrite)
  domains = read_item_domains(item_map_path)
  if pad_token and pad_token in domains:
    raise ValueError("pad token %r is also an item id" % pad_token)
  progress = common.ProgressLogger("reading %s" % interactions_path)
  users = read_user_events(interactions_path, progress.lines)
  a_items, b_items = set(), set()
  lengths, target_counts = [], []
  num_pretrain = num_finetune = num_short = 0
  with common.AtomicOutputs(output_dir) as out:
    with open(out.path(PRETRAIN_CSV), "w", encoding="utf-8") as pre, \
        open(out.path(FINETUNE_CSV), "w", encoding="utf-8") as fine:
      for uid, events in users:
        history, targets, seen_targets = [], [], set()
        # sorted() is stable: equal timestamps keep their file order.
        for event in sorted(events, key=lambda e: e.timestamp):
          domain = domains.get(event.item)
          if domain is None:
            raise data_loader.DatasetError(
                "%s: item %s of user %s is not in %s" %
                (interactions_path, event.item, uid, item_map_path))
          if domain == domain_a:
            history.append(event.item)
          elif domain == domain_b and event.item not in seen_targets:
            seen_targets.add(event.item)
            targets.append(event.item)
        if len(history) < max(min_history, 1):
          num_short += 1
          continue
        kept = history[-max_seq_length:] if max_seq_length > 0 else history
        line = ",".join(common.pad_sequence(kept, max_seq_length, pad_token))
        pre.write(line + "\n")
        num_pretrain += 1
        a_items.update(kept)
        lengths.append(len(kept))
        if max_targets > 0:
          targets = targets[:max_targets]
        if len(targets) >= max(min_targets, 1):
          fine.write("%s,,%s\n" % (line, ",".join(targets)))
          num_finetune += 1
          b_items.update(targets)
          target_counts.append(len(targets))
    stats = {
        "interactions_file": os.path.abspath(interactions_path),
        "item_map_file": os.path.abspath(item_map_path),
        "num_users_read": len(users),
        "num_users_dropped_short_history": num_short,
        "num_pretrain_users": num_pretrain,
        "num_finetune_users": num_finetune,
        "num_domain_a_items": len(a_items),
        "num_domain_b_items": len(b_items),
        "num_domain_a_interactions_kept": sum(lengths),
        "num_finetune_examples": sum(target_counts),
        "sequence_length": common.length_stats(lengths),
        "targets_per_user": common.length_stats(target_counts),
        "max_seq_length": max_seq_length,
        "min_history": min_history,
        "min_targets": min_targets,
        "max_targets": max_targets,
        "pad_token": pad_token,
        "tie_break": "stable sort by timestamp (file order)",
    }
    common.write_json(out.path(STATS_JSON), stats)
  return stats


def define_flags():
  flags.DEFINE_string("interactions", None,
                      "<pair>_50_preprocessed.txt(.gz): uid item|ts ...")
  flags.DEFINE_string("item_map", None,
                      "map_item_50.txt(.gz): JSON {ASIN: [item_id, domain]}.")
  flags.DEFINE_integer("max_seq_length", 50,
                       "Keep the most recent N domain-A items; 0 keeps all.")
  flags.DEFINE_integer("min_history", 5,
                       "Drop users with fewer domain-A items than this.")
  flags.DEFINE_integer("min_targets", 1,
                       "Fine-tuning users need this many domain-B items.")
  flags.DEFINE_integer("max_targets", 0,
                       "Keep a user's first N domain-B items (0: all).")
  flags.DEFINE_integer("domain_a", 0, "Domain code of the source domain.")
  flags.DEFINE_integer("domain_b", 1, "Domain code of the target domain.")
  common.define_csv_output_flags()


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  stats = common.call_with_flags(convert_amazon,
                                 interactions_path="interactions",
                                 item_map_path="item_map")
  print("Wrote %s and %s into %s" % (PRETRAIN_CSV, FINETUNE_CSV,
                                     os.path.abspath(FLAGS.output_dir)))
  print("  %d users read, %d pretraining users (%d dropped: fewer than %d "
        "domain-A items), %d fine-tuning users" %
        (stats["num_users_read"], stats["num_pretrain_users"],
         stats["num_users_dropped_short_history"], stats["min_history"],
         stats["num_finetune_users"]))
  print("  domain A: %d items, sequence length %s" %
        (stats["num_domain_a_items"], stats["sequence_length"]))
  print("  domain B: %d target items, %d (user, target) examples, per user %s"
        % (stats["num_domain_b_items"], stats["num_finetune_examples"],
           stats["targets_per_user"]))


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["interactions", "item_map", "output_dir"])
  app.run(main)
