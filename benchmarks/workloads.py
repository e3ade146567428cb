"""Benchmark sizes and the generated data they run on.

A preset fixes the model and batch sizes; `prepare_data` writes a
pretraining and a fine-tuning TFRecord dataset of that size with the
project's own converter (`tfrecord_tools.convert_csv`), plus a randomly
initialized backbone checkpoint for fine-tuning to start from.
"""
import collections
import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from typing import List

import numpy as np
import tensorflow as tf

import data_loader
import finetuning
from ops import heads
from ops import masking
from ops import modeling
from ops import networks
from tfrecord_tools import convert_csv



@dataclasses.dataclass(frozen=True)
class Workload:
  """What a benchmark workload trains.

  pretraining: True for the pretraining script, False for fine-tuning.
  encoder: "nextitnet" (causal) or "grec" (pretraining only).
  softmax: the pretraining head, "sampled" or "full".
  insertion: PeterRec's patches, "serial" or "parallel" (fine-tuning only).
  """
  name: str
  pretraining: bool
  encoder: str = "nextitnet"
  softmax: str = "sampled"
  insertion: str = "serial"

  @property
  def causal(self):
    return self.encoder == "nextitnet"


WORKLOAD_SPECS = collections.OrderedDict((w.name, w) for w in (
    Workload("pretrain_nextitnet", True),
    Workload("pretrain_nextitnet_full", True, softmax="full"),
    Workload("pretrain_grec", True, encoder="grec"),
    Workload("finetune_serial", False),
    Workload("finetune_parallel", False, insertion="parallel"),
))
WORKLOADS = tuple(WORKLOAD_SPECS)


def workload(name):
  """The Workload called `name` (one of WORKLOADS)."""
  if name not in WORKLOAD_SPECS:
    raise ValueError("unknown workload %r, expected one of %s" %
                     (name, WORKLOADS))
  return WORKLOAD_SPECS[name]


@dataclasses.dataclass
class Preset:
  """Sizes of one benchmark run."""
  name: str
  channels: int = 64
  dilations: List[int] = dataclasses.field(
      default_factory=lambda: [1, 4, 1, 4, 1, 4, 1, 4])
  kernel_size: int = 3
  num_items: int = 5000          # item vocabulary (with id 0)
  seq_length: int = 20           # pretraining sequences = fine-tuning sources
  num_sampled: int = 1000        # sampled softmax negatives
  pretrain_batch: int = 32
  finetune_batch: int = 512
  num_targets: int = 1000        # fine-tuning target vocabulary (with id 0)
  num_sequences: int = 20000     # pretraining sequences written
  num_finetune_users: int = 20000
  # Timed steps per repetition: (a) feed_dict, (b) Estimator, (c) input only.
  pretrain_steps: tuple = (100, 400, 3000)
  finetune_steps: tuple = (10, 40, 1000)
  # Untimed steps first: the first ~10 steps of a session are slow (kernel
  # set-up, allocator, input pipeline start).
  pretrain_warmup: int = 50
  finetune_warmup: int = 15


PRESETS = {
    # The sizes of the original demo code.
    "demo": Preset("demo"),
    # The paper's width: 256 channels; fewer, longer steps.
    "paper": Preset("paper", channels=256, pretrain_steps=(30, 100, 3000),
                    finetune_steps=(2, 8, 1000), pretrain_warmup=20,
                    finetune_warmup=5),
    # A few seconds per workload: for the smoke test only.
    "smoke": Preset("smoke", channels=16, dilations=[1, 2], num_items=300,
                    seq_length=8, num_sampled=50, pretrain_batch=8,
                    finetune_batch=16, num_targets=40, num_sequences=400,
                    num_finetune_users=400, pretrain_steps=(3, 3, 20),
                    finetune_steps=(3, 3, 20), pretrain_warmup=2,
                    finetune_warmup=2),
}


def model_config(preset, causal):
  """The backbone ModelConfig of a preset (matmul conv, the default)."""
  return modeling.ModelConfig(
      item_size=preset.num_items, channels=preset.channels,
      dilations=list(preset.dilations), kernel_size=preset.kernel_size,
      causal=causal)


def num_predictions(preset):
  """Masked positions per GRec sequence (defaults 0.3 and 30)."""
  return masking.num_to_predict(preset.seq_length)


def _zipf_items(rng, size, num_items):
  """Item ids in [1, num_items) with a mild popularity skew."""
  ranks = rng.zipf(1.2, size=size)
  return (ranks - 1) % (num_items - 1) + 1


def generate_sequences(preset, seed=1):
  """[num_sequences, seq_length] item ids; every id occurs at least once."""
  rng = np.random.default_rng(seed)
  items = _zipf_items(rng, (preset.num_sequences, preset.seq_length),
                      preset.num_items)
  # Make the vocabulary exactly num_items: list every id once up front.
  every = np.arange(1, preset.num_items)
  flat = items.reshape(-1)
  flat[:every.size] = every
  return flat.reshape(items.shape)


def prepare_data(preset, work_dir, seed=1):
  """Writes the datasets and the backbone checkpoints of `preset`.

  Returns:
    dict with "pretrain" and "finetune" metadata dicts (see
    data_loader.load_metadata) and "backbones" {causal: checkpoint prefix}.
  """
  sequences = generate_sequences(preset, seed)
  pretrain_dir = os.path.join(work_dir, "data_pretrain")
  convert_csv.make_pretrain_dataset(
      pretrain_dir, sequences.tolist(), test_fraction=0.05, overwrite=True)
  pretrain = data_loader.load_metadata(pretrain_dir)
  if pretrain["item_vocab_size"] != preset.num_items:
    raise AssertionError("generated %d items, wanted %d" %
                         (pretrain["item_vocab_size"], preset.num_items))
  rng = np.random.default_rng(seed + 1)
  sources = _zipf_items(rng, (preset.num_finetune_users, preset.seq_length),
                        preset.num_items)
  targets = rng.integers(1, preset.num_targets,
                         size=(preset.num_finetune_users, 1))
  targets[:preset.num_targets - 1, 0] = np.arange(1, preset.num_targets)
  finetune_dir = os.path.join(work_dir, "data_finetune")
  convert_csv.make_finetune_dataset(
      finetune_dir, sources.tolist(), targets.tolist(),
      item_vocab=pretrain["paths"]["item_vocab"], test_fraction=0.05,
      overwrite=True)
  finetune = data_loader.load_metadata(finetune_dir)
  if finetune["target_vocab_size"] != preset.num_targets:
    raise AssertionError("generated %d targets, wanted %d" %
                         (finetune["target_vocab_size"], preset.num_targets))
  backbones = {causal: write_backbone_checkpoint(
      preset, causal, os.path.join(work_dir, "backbone_%s" %
                                   ("causal" if causal else "noncausal")))
               for causal in (True, False)}
  return {"pretrain": pretrain, "finetune": finetune, "backbones": backbones}


@contextlib.contextmanager
def generated_data(preset, work_dir=None, seed=1):
  """`prepare_data` in `work_dir` (kept), or in a temporary directory that
  is removed afterwards; yields (data, work_dir)."""
  temporary = work_dir is None
  work_dir = work_dir or tempfile.mkdtemp(prefix="peterrec_bench_")
  try:
    yield prepare_data(preset, work_dir, seed), work_dir
  finally:
    if temporary:
      shutil.rmtree(work_dir, ignore_errors=True)


def report(title, table, json_output=None, results=None):
  """Prints a benchmark's title and table; writes `results` as JSON."""
  print("\n%s\n" % title)
  print(table)
  if json_output:
    write_json(json_output, results)


def write_json(path, results):
  """A benchmark's results as indented JSON (numpy values as text)."""
  with open(path, "w") as f:
    json.dump(results, f, indent=2, sort_keys=True, default=str)


def write_backbone_checkpoint(preset, causal, directory):
  """A randomly initialized pretraining graph saved as a checkpoint."""
  prefix = os.path.join(directory, "backbone.ckpt")
  with tf.Graph().as_default():
    config = model_config(preset, causal)
    itemseq = tf.zeros([1, preset.seq_length], tf.int32)
    modeling.backbone(itemseq, config)
    networks.pretrain_output_layer(config, "sampled")
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      saver.save(sess, prefix, write_meta_graph=False)
  return prefix


def default_num_sampled(preset):
  return min(preset.num_sampled, heads.default_num_sampled(preset.num_items))


def finetune_loss(context, target, negative, config, insertion,
                  target_vocab_size):
  """PeterRec's BCE fine-tuning loss and the variables it trains.

  Args:
    context: int32 [B, L] (rows[:, :-1]); target, negative: int32 [B].

  Returns:
    (float32 scalar loss incl. the target table's L2 term, var_list).
  """
  user, table = finetuning.build_finetune_model(
      context, config, "peterrec", insertion, 1, target_vocab_size)
  loss = heads.bce_loss(heads.target_logits(user, table, target),
                        heads.target_logits(user, table, negative))
  loss += heads.regularization_loss()
  var_list = finetuning.trainable_variables_for(
      "peterrec", tf.compat.v1.trainable_variables(), len(config.dilations))
  return loss, var_list
