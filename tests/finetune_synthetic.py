"""The planted-transfer world of `tfrecord_tools.synthetic`, pretrained, for tests.

The world itself (latent user groups drive the source-domain walks; the
target task predicts the group of new users) and why transfer helps are
described in `tfrecord_tools/synthetic.py`, which the built-in demo
(`reproduce_tables.py --dataset=demo`) uses too.

`make_world` writes the pretraining and fine-tuning datasets with the
project's converter (fine-tuning sources mapped through the pretraining
vocabulary) and pretrains a small NextItNet in a plain session loop, saving
the checkpoint and `model_config.json` the way a pretraining model_dir does.
"""
import os

import numpy as np
import tensorflow as tf

import data_loader
from ops import modeling
from ops import networks
from tfrecord_tools import convert_csv
from tfrecord_tools import synthetic


def make_world(directory, num_groups=4, items_per_group=100, source_length=9,
               num_pretrain_users=4000, num_finetune_users=400,
               finetune_test_fraction=0.5, channels=32, dilations=(1, 2),
               pretrain_steps=400, pretrain_batch_size=64,
               learning_rate=0.005, seed=0):
  """Writes data and a pretrained backbone under `directory`.

  Returns:
    dict: checkpoint (prefix inside a model_dir holding model_config.json),
    finetune_data (converted dataset dir), config (ModelConfig),
    pretrain_loss (last batch).
  """
  rng = np.random.RandomState(seed)
  pretrain_data = os.path.join(directory, "pretrain_data")
  world = synthetic.generate_world(
      rng, num_groups=num_groups, items_per_group=items_per_group,
      source_length=source_length, num_pretrain_users=num_pretrain_users,
      num_finetune_users=num_finetune_users)
  sequences = world["pretrain"]
  convert_csv.make_pretrain_dataset(pretrain_data, sequences,
                                    test_fraction=0.0)
  vocab_path = os.path.join(pretrain_data, data_loader.ITEM_VOCAB_FILE)
  vocab = data_loader.Vocabulary.load(vocab_path)
  item_ids = vocab.transform(sequences, source_length + 1)

  # New users for the target task, labelled with their group.
  sources, labels = world["finetune_sources"], world["group_labels"]
  finetune_data = os.path.join(directory, "finetune_data")
  convert_csv.make_finetune_dataset(finetune_data, sources, labels,
                                    item_vocab=vocab_path,
                                    test_fraction=finetune_test_fraction)

  config = modeling.ModelConfig(item_size=len(vocab), channels=channels,
                                dilations=list(dilations), kernel_size=3,
                                causal=True)
  model_dir = os.path.join(directory, "pretrain_model")
  tf.io.gfile.makedirs(model_dir)
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(seed)
    batch = tf.compat.v1.placeholder(tf.int32, [pretrain_batch_size,
                                                source_length + 1])
    outputs = networks.nextitnet_pretrain(batch, config, softmax="full")
    train_op = tf.compat.v1.train.AdamOptimizer(learning_rate).minimize(
        outputs["loss"])
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      for _ in range(pretrain_steps):
        rows = item_ids[rng.randint(len(item_ids), size=pretrain_batch_size)]
        loss, _ = session.run([outputs["loss"], train_op], {batch: rows})
      prefix = saver.save(session, os.path.join(model_dir, "model.ckpt"),
                          write_meta_graph=False)
  with open(os.path.join(model_dir, modeling.CONFIG_FILENAME), "w") as f:
    f.write(config.to_json_string())
  return {"checkpoint": prefix, "finetune_data": finetune_data,
          "config": config, "pretrain_loss": float(loss)}
