r"""The built-in demo world: two domains with a planted transferable signal.

Deterministic (numpy RandomState seeded by `seed`), small, and written in
the original CSV formats so that the demo also exercises the converters:

- `pretrain.csv`: `i1,...,iN` source-domain sequences of unlabelled users;
- `finetune_group.csv`: `i1,...,iN,,g` for new users, `g` = the user's
  latent group (a user-profile task, like the paper's gender/age);
- `finetune_coldstart.csv`: `i1,...,iN,,t1,t2,...` for the same new users,
  the target-domain items they interacted with (cold-start recommendation).

The world. Users belong to one of `num_groups` latent groups (the "latent
user preference"); each group owns `items_per_group` source items arranged
in a ring, and `targets_per_group` target-domain items. A user's source
sequence is a walk on the group's ring (start anywhere, then move 1, 2 or 3
places per step), so the next item depends on the current one. A user's
target items are drawn from the group's target items with Zipf-like
popularity (weight 1/rank).

Why transfer helps, and what each method can use:
- Next-item pretraining on many unlabelled sequences learns which items
  belong together and how the walk moves: the backbone knows the groups.
- In the fine-tuning rows the `[CLS]` slot (item id 0, never seen in
  pretraining) sits where the "current item" is, which is what a
  pretrained NextItNet state mostly encodes; the group must be gathered
  from the earlier positions. Model patches and `layer_norm2` can adapt
  the network to do that (PeterRec); a head on the frozen `[CLS]` state
  (FineCLS) gets only what happens to be there.
- A randomly initialized frozen backbone (PeterZero) knows nothing about
  the items; the patches alone cannot learn hundreds of items from a few
  hundred labels in the same budget.

  python -m tfrecord_tools.synthetic --output_dir=output/data/synthetic

Used by `reproduce_tables.py --dataset=demo` and by
`tests/finetune_synthetic.py` (the planted-transfer test).
"""
import os

from absl import app
from absl import flags
import numpy as np

from tfrecord_tools import common
from tfrecord_tools import convert_csv

PRETRAIN_CSV = "pretrain.csv"
GROUP_CSV = "finetune_group.csv"
COLDSTART_CSV = "finetune_coldstart.csv"
STATS_JSON = "stats.json"
OUTPUTS = (PRETRAIN_CSV, GROUP_CSV, COLDSTART_CSV, STATS_JSON)

# The demo world's defaults (tests/finetune_synthetic.py uses 400 new users).
DEFAULTS = {
    "num_groups": 4,            # latent user groups (chance accuracy 1/4)
    "items_per_group": 100,     # source items per group (a ring)
    "source_length": 9,         # items per fine-tuning source sequence
    "num_pretrain_users": 4000,  # unlabelled users (sequences of length + 1)
    "num_finetune_users": 800,  # new users with a label and target items
    "targets_per_group": 25,    # target-domain items per group
    "max_targets": 3,           # target items per user: 1..max_targets
}


def walk_sequences(rng, groups, items_per_group, length):
  """One token list per user: a walk on the ring of the user's group.

  Args:
    rng: numpy RandomState (consumed: one start and length - 1 moves a user).
    groups: int array, the users' groups.
    items_per_group: ring size.
    length: items per sequence.

  Returns:
    list of lists of tokens "s<item>".
  """
  rows = []
  for group in groups:
    steps = np.concatenate([[rng.randint(items_per_group)],
                            rng.randint(1, 4, size=length - 1)])
    items = group * items_per_group + np.cumsum(steps) % items_per_group
    rows.append(["s%d" % i for i in items])
  return rows


def target_lists(rng, groups, targets_per_group, max_targets):
  """Each user's target-domain items ("t<item>"), from the user's group.

  Items of a group are drawn without replacement with weights 1/rank, so
  some target items are popular; 1..max_targets items a user.
  """
  weights = 1.0 / np.arange(1, targets_per_group + 1)
  weights /= weights.sum()
  rows = []
  for group in groups:
    count = rng.randint(1, max_targets + 1)
    picks = rng.choice(targets_per_group, size=count, replace=False,
                       p=weights)
    rows.append(["t%d" % (group * targets_per_group + p) for p in picks])
  return rows


def generate_world(rng, num_groups=4, items_per_group=100, source_length=9,
                   num_pretrain_users=4000, num_finetune_users=800,
                   targets_per_group=25, max_targets=3, target_seed=None):
  """The world's rows, in memory.

  `rng` is consumed in this order (the planted-transfer test relies on it):
  pretraining groups, pretraining walks (length source_length + 1), new
  users' groups, their walks. Target items come from a separate
  RandomState(target_seed) so that adding them changes nothing else.

  Returns:
    dict: pretrain (token lists), finetune_sources (token lists),
    finetune_groups (int array), group_labels ([["group<g>"]]),
    coldstart_targets (token lists).
  """
  groups = rng.randint(num_groups, size=num_pretrain_users)
  pretrain = walk_sequences(rng, groups, items_per_group, source_length + 1)
  new_groups = rng.randint(num_groups, size=num_finetune_users)
  sources = walk_sequences(rng, new_groups, items_per_group, source_length)
  target_rng = np.random.RandomState(
      0 if target_seed is None else target_seed)
  return {
      "pretrain": pretrain,
      "finetune_sources": sources,
      "finetune_groups": new_groups,
      "group_labels": [["group%d" % g] for g in new_groups],
      "coldstart_targets": target_lists(target_rng, new_groups,
                                        targets_per_group, max_targets),
  }


def write_world_csvs(output_dir, seed=0, overwrite=False, **world_options):
  """Writes the three CSVs and stats.json of the world seeded by `seed`.

  Args:
    output_dir: created if missing.
    seed: the world's seed (RandomState(seed) for users and walks,
      RandomState(seed + 1000) for target items).
    overwrite: replace existing outputs.
    **world_options: keys of DEFAULTS.

  Returns:
    dict of statistics (also written to stats.json), with "paths".
  """
  unknown = sorted(set(world_options) - set(DEFAULTS))
  if unknown:
    raise ValueError("unknown world options %s" % unknown)
  options = dict(DEFAULTS, **world_options)
  common.check_csv_outputs(output_dir, OUTPUTS, overwrite)
  os.makedirs(output_dir, exist_ok=True)
  world = generate_world(np.random.RandomState(seed),
                         target_seed=seed + 1000, **options)
  paths = {
      "pretrain": os.path.join(output_dir, PRETRAIN_CSV),
      "group": os.path.join(output_dir, GROUP_CSV),
      "coldstart": os.path.join(output_dir, COLDSTART_CSV),
  }
  convert_csv.write_pretrain_csv(paths["pretrain"], world["pretrain"])
  convert_csv.write_finetune_csv(paths["group"], world["finetune_sources"],
                                 world["group_labels"])
  convert_csv.write_finetune_csv(paths["coldstart"],
                                 world["finetune_sources"],
                                 world["coldstart_targets"])
  stats = dict(options, seed=seed, paths=paths,
               num_coldstart_examples=sum(
                   len(t) for t in world["coldstart_targets"]),
               group_counts=np.bincount(world["finetune_groups"],
                                        minlength=options["num_groups"]).tolist())
  common.write_json(os.path.join(output_dir, STATS_JSON), stats)
  return stats


def define_flags():
  flags.DEFINE_string("output_dir", None, "Where to write the CSVs.")
  flags.DEFINE_integer("seed", 0, "The world's seed.")
  flags.DEFINE_bool("overwrite", False, "Replace existing output CSVs.")


def main(argv):
  del argv
  stats = write_world_csvs(flags.FLAGS.output_dir, flags.FLAGS.seed,
                           flags.FLAGS.overwrite)
  print("wrote %s" % ", ".join(sorted(stats["paths"].values())))


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["output_dir"])
  app.run(main)
