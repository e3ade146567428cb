"""Every file the converter and the scripts write and read goes through
tf.io.gfile: datasets and a model directory on `ram://` (TensorFlow's
in-memory file system: like gs:// no local folder and no directory rename)
work end to end. In one process, since ram:// lives in it.

Fine-tuning from a ram:// checkpoint is not tested: TensorFlow's own
`init_from_checkpoint` asks whether the prefix is a directory, and ram://
says yes to any prefix of a file name (gs:// does not)."""
import json
import os
import uuid

import tensorflow as tf

import data_loader
import nextitnet_pretrain
from tests import test_pretrain_convergence
from tfrecord_tools import convert_csv


def _json(path):
  return json.loads(data_loader.read_text(path))


def test_datasets_and_model_directories_on_ram_filesystem(tmp_path,
                                                          monkeypatch):
  monkeypatch.chdir(tmp_path)  # a mistaken local write would land here
  root = "ram://peterrec-%s" % uuid.uuid4().hex[:8]
  sequences = test_pretrain_convergence.planted_sequences(120)
  pretrain_csv = convert_csv.write_pretrain_csv(root + "/pretrain.csv",
                                                sequences)
  convert_csv.convert("pretrain", pretrain_csv, root + "/pretrain",
                      test_fraction=0.2, print_summary=False)
  metadata = data_loader.load_metadata(root + "/pretrain")
  assert metadata["paths"]["train"] == root + "/pretrain/train.tfrecord"

  model_dir = root + "/model"
  metrics = nextitnet_pretrain.run(nextitnet_pretrain.default_options(
      data_dir=root + "/pretrain", output_dir=model_dir, channels=8,
      dilations=["1", "2"], train_batch_size=8, num_train_steps=6))
  assert tf.train.latest_checkpoint(model_dir).endswith("model.ckpt-6")
  assert _json(model_dir + "/metrics.json")["global_step"] == 6
  assert data_loader.read_text(model_dir + "/item_vocab.txt") == \
      data_loader.read_text(root + "/pretrain/item_vocab.txt")
  assert metrics["num_examples"] > 0

  sources = [[str(s) for s in seq[-5:]] for seq in sequences[:80]]
  targets = [["t%d" % (int(seq[-1]) % 5), "t%d" % (int(seq[-2]) % 5)]
             for seq in sequences[:80]]
  finetune_csv = convert_csv.write_finetune_csv(root + "/finetune.csv",
                                                sources, targets)
  convert_csv.convert("finetune", finetune_csv, root + "/finetune",
                      item_vocab=model_dir + "/item_vocab.txt",
                      test_fraction=0.25, print_summary=False)
  finetune = data_loader.load_metadata(root + "/finetune")
  assert finetune["task"] == "recommendation"
  assert finetune["item_vocab_from"] == model_dir + "/item_vocab.txt"
  users = data_loader.read_finetune_users(finetune["paths"]["train"])
  assert len(users) == finetune["num_train"]
  assert os.listdir(tmp_path) == []  # nothing was written locally
