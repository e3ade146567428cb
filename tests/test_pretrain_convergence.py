"""Both encoders learn a planted sequential pattern far above popularity.

Sequences follow a fixed random successor chain (item i is followed by
successor[i]) with 10% noise, so the last item is predictable from the one
before it; every item is about equally popular, so a popularity ranking
hits the top 5 about 5/40 of the time.
"""
import collections

import numpy as np
import pytest

import data_loader
import nextitnet_pretrain as pretrain
from tests import test_pretrain
from tfrecord_tools import convert_csv

NUM_ITEMS = 40
LENGTH = 10


def planted_sequences(num_sequences=600, noise=0.1, seed=0):
  rng = np.random.RandomState(seed)
  successor = rng.permutation(NUM_ITEMS) + 1
  sequences = []
  for _ in range(num_sequences):
    item = rng.randint(1, NUM_ITEMS + 1)
    sequence = [item]
    for _ in range(LENGTH - 1):
      if rng.rand() < noise:
        item = rng.randint(1, NUM_ITEMS + 1)
      else:
        item = successor[item - 1]
      sequence.append(item)
    sequences.append(sequence)
  return sequences


@pytest.fixture(scope="module")
def planted_data(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("planted"))
  convert_csv.make_pretrain_dataset(data_dir, planted_sequences(),
                                    test_fraction=0.2)
  return data_dir


def popularity_hr_at_5(data_dir):
  """HR@5 of recommending the 5 most frequent training items to everyone."""
  metadata = data_loader.load_metadata(data_dir)
  train = test_pretrain.read_itemseq(metadata["paths"]["train"],
                                     metadata["seq_length"])
  test = test_pretrain.read_itemseq(metadata["paths"]["test"],
                                    metadata["seq_length"])
  top5 = [item for item, _ in
          collections.Counter(train.ravel().tolist()).most_common(5)]
  return float(np.mean(np.isin(test[:, -1], top5)))


@pytest.mark.parametrize("encoder", ["nextitnet", "grec"])
def test_learns_planted_pattern(planted_data, tmp_path, encoder):
  baseline = popularity_hr_at_5(planted_data)
  assert baseline < 0.25
  # Demo softmax per encoder: full for NextItNet, sampled for GRec.
  metrics = pretrain.run(pretrain.default_options(
      data_dir=planted_data, output_dir=str(tmp_path / encoder),
      encoder=encoder, preset="demo", channels=16, dilations=[1, 2],
      train_batch_size=32,
      learning_rate=0.005, num_train_steps=300, seed=1,
      log_step_count_steps=100, save_checkpoints_steps=1000))
  assert metrics["global_step"] == 300
  assert metrics["num_examples"] == 120  # the whole test split
  # About 0.9 of the last items follow the chain.
  assert metrics["hr@5"] > 0.7 and metrics["hr@5"] > 3 * baseline, (
      metrics, baseline)
  assert metrics["mrr@5"] > 0.5
  assert metrics["mrr@5"] <= metrics["ndcg@5"] <= metrics["hr@5"]
