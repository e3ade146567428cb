"""Built-in demo: a tiny NextItNet pretraining smoke job on generated data.

Runs with no external data: it generates sequences with a planted successor
pattern, trains a small NextItNet built by ops/ for a few hundred steps and
prints HR@5 of next-item prediction against the popularity baseline.
(The full demo, pretraining then fine-tuning every method, replaces this once
the scripts land.)
"""
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from ops import metrics
from ops import modeling
from ops import networks
import training_utils

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 300, "Training steps.")
flags.DEFINE_integer("seed", 7, "Random seed of data and model.")


def planted_sequences(num_users, length, item_size, rng):
  """Each item is followed by its successor (item * 3 mod (V-1) + 1) 80% of the time."""
  sequences = np.zeros((num_users, length), np.int32)
  sequences[:, 0] = rng.integers(1, item_size, size=num_users)
  for t in range(1, length):
    successor = sequences[:, t - 1] * 3 % (item_size - 1) + 1
    noise = rng.integers(1, item_size, size=num_users)
    sequences[:, t] = np.where(rng.random(num_users) < 0.8, successor, noise)
  return sequences


def main(_):
  rng = np.random.default_rng(FLAGS.seed)
  item_size, length, batch_size = 50, 12, 32
  train = planted_sequences(2000, length, item_size, rng)
  test = planted_sequences(500, length, item_size, rng)
  config = modeling.ModelConfig(item_size=item_size, channels=32,
                                dilations=[1, 2, 1, 2])
  tf.compat.v1.set_random_seed(FLAGS.seed)
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(FLAGS.seed)
    itemseq = tf.compat.v1.placeholder(tf.int32, [None, length])
    outputs = networks.nextitnet_pretrain(itemseq, config, softmax="sampled")
    train_op = tf.compat.v1.train.AdamOptimizer(0.005).minimize(
        outputs["loss"])
    rank = metrics.rank_of_positive(outputs["last_logits"], itemseq[:, -1])
    hits = metrics.hit_at_k(rank, 5)
    with tf.compat.v1.Session(config=training_utils.session_config()) as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      start = time.time()
      for step in range(FLAGS.steps):
        batch = train[rng.integers(0, len(train), size=batch_size)]
        _, loss = sess.run([train_op, outputs["loss"]], {itemseq: batch})
        if (step + 1) % 100 == 0:
          print("step %d loss %.3f (%.1f steps/s)" %
                (step + 1, loss, (step + 1) / (time.time() - start)))
      hit_rate = float(np.mean(sess.run(hits, {itemseq: test})))
  popular = np.argsort(-np.bincount(train[:, -1], minlength=item_size))[:5]
  baseline = float(np.mean(np.isin(test[:, -1], popular)))
  print(training_utils.format_metrics_table(
      {"hr@5 NextItNet": hit_rate, "hr@5 popularity": baseline},
      title="Demo smoke job: next-item prediction on planted sequences"))


if __name__ == "__main__":
  app.run(main)
