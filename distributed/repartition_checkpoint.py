r"""Rewrites a checkpoint's item tables as whole tensors, or as slices.

With `--num_embedding_partitions=N` the pretraining graph holds the item
table and the output layer as N variables each (`allitem_embeddings/part_0`,
...; ops/modeling.partitioned). A Saver does not store those names: it
stores each partitioned variable under the whole variable's name and shape
(`allitem_embeddings`, `allitem_embeddings/Adam`, ...) with one slice entry
per part, which `tf.train.list_variables` does not show. Such a checkpoint
already restores into the unpartitioned scripts (and into any other
partitioning): TensorFlow reads the slices it needs. This tool rewrites the
layout itself, for readers that want one entry per tensor, as the original
code writes, or to produce the slices a partitioned run would have written:

  # partitioned -> the original layout (every tensor whole)
  python -m distributed.repartition_checkpoint \
      --input=runs/cluster/model.ckpt-300 --output=runs/whole/model.ckpt-300
  # and back: the item tables (and their Adam slots) in 2 slices
  python -m distributed.repartition_checkpoint \
      --input=runs/whole/model.ckpt-300 --output=runs/sliced/model.ckpt-300 \
      --num_partitions=2

Every tensor is copied, Adam slots, `beta1_power`, `beta2_power` and
`global_step` included, so the result restores into the training graph
(resuming) as well as into evaluation and fine-tuning. The output directory
must hold no checkpoint yet; it gets a `checkpoint` state file naming the
new checkpoint, and the input directory's model_config.json,
pretrain_config.json and item_vocab.txt when it lacks them (fine-tuning
reads them beside the checkpoint). The checkpoint is held in memory while
it is written.
"""
import os
import sys

from absl import app
from absl import flags
import tensorflow as tf

import data_loader
import nextitnet_pretrain
import training_utils
from ops import checkpoint as checkpoint_lib
from ops import modeling
from ops import networks

# The files of a pretraining model_dir that describe its checkpoints.
MODEL_FILES = (modeling.CONFIG_FILENAME,
               nextitnet_pretrain.PRETRAIN_CONFIG_FILENAME,
               data_loader.ITEM_VOCAB_FILE)


def saved_blocks(name, shape, partitions, axes=None):
  """How one tensor is written: [(shape_and_slice, index)].

  Args:
    name: the tensor's name in the checkpoint.
    shape: its full shape (list of ints).
    partitions: slices of the tensors named in `axes` (0 or 1: whole).
    axes: {variable name: axis} (default networks.PARTITION_AXES); an Adam
      slot is split as its variable.

  Returns:
    list of (shape_and_slice string, index tuple or None): "" and None for
    the whole tensor, else one entry per slice with the numpy index that
    cuts it out.
  """
  axes = networks.PARTITION_AXES if axes is None else axes
  axis = axes.get(checkpoint_lib.slot_owner(name))
  if partitions <= 1 or axis is None:
    return [("", None)]
  blocks = []
  for offset, length in checkpoint_lib.partition_blocks(shape[axis],
                                                        partitions):
    index = tuple(slice(offset, offset + length) if dim == axis else
                  slice(None) for dim in range(len(shape)))
    blocks.append((checkpoint_lib.slice_spec(shape, axis, offset, length),
                   index))
  return blocks


def repartition(input_checkpoint, output_prefix, partitions, axes=None):
  """Writes every tensor of `input_checkpoint` to `output_prefix`.

  Args:
    input_checkpoint: checkpoint prefix or directory (its latest).
    output_prefix: the new checkpoint's prefix, in a directory without a
      checkpoint.
    partitions: slices of each tensor of `axes` and of its Adam slots (0 or
      1: every tensor whole, the original layout).
    axes: see `saved_blocks`.

  Returns:
    dict: "input" (the resolved prefix), "output", "tensors" (count),
    "input_slices" and "output_slices" ({name: slices}, see
    checkpoint_lib.stored_slices).

  Raises:
    ValueError: no input checkpoint; the output directory already holds
      one; partitions larger than a split dimension.
  """
  path = checkpoint_lib.resolve_checkpoint(input_checkpoint)
  output_dir = os.path.dirname(os.path.abspath(output_prefix))
  if tf.train.latest_checkpoint(output_dir) or tf.io.gfile.exists(
      output_prefix + ".index"):
    raise ValueError("%s already holds a checkpoint: choose a new directory"
                     % output_dir)
  reader = checkpoint_lib.reader(path)
  names, specs, values = [], [], []
  for name, shape in sorted(reader.get_variable_to_shape_map().items()):
    value = reader.get_tensor(name)
    for spec, index in saved_blocks(name, shape, partitions, axes):
      names.append(name)
      specs.append(spec)
      values.append(value if index is None else value[index])
  tf.io.gfile.makedirs(output_dir)
  _save(output_prefix, names, specs, values)
  tf.compat.v1.train.update_checkpoint_state(
      output_dir, output_prefix, all_model_checkpoint_paths=[output_prefix])
  for filename in MODEL_FILES:
    source = os.path.join(os.path.dirname(path), filename)
    target = os.path.join(output_dir, filename)
    if tf.io.gfile.exists(source) and not tf.io.gfile.exists(target):
      tf.io.gfile.copy(source, target)
  return {"input": path, "output": output_prefix,
          "tensors": len(set(names)),
          "input_slices": checkpoint_lib.stored_slices(path),
          "output_slices": checkpoint_lib.stored_slices(output_prefix)}


def _save(prefix, names, specs, values):
  """One SaveV2 of numpy `values` (fed, so no size limit of a graph)."""
  with tf.Graph().as_default():
    feeds = [tf.compat.v1.placeholder(tf.as_dtype(v.dtype), v.shape)
             for v in values]
    save = tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                             shape_and_slices=specs, tensors=feeds)
    with tf.compat.v1.Session() as session:
      session.run(save, dict(zip(feeds, values)))


def describe(summary):
  """One line per side: how many tensors, which ones in slices."""
  def layout(slices):
    if not slices:
      return "every tensor whole"
    return "%d in slices (%s)" % (len(slices), ", ".join(
        "%s: %d" % item for item in sorted(slices.items())))
  return "%s: %d tensors, %s\n%s: %d tensors, %s" % (
      summary["input"], summary["tensors"], layout(summary["input_slices"]),
      summary["output"], summary["tensors"], layout(summary["output_slices"]))


def define_flags():
  flags.DEFINE_string("input", None, "Checkpoint prefix or directory (its "
                      "latest checkpoint).")
  flags.DEFINE_string("output", None, "Prefix of the new checkpoint, e.g. "
                      "runs/whole/model.ckpt-300, in a directory that holds "
                      "no checkpoint.")
  flags.DEFINE_integer("num_partitions", 0, "Slices of the item table and "
                       "the output layer (and their Adam slots): 0 or 1 = "
                       "whole tensors, the original layout; N = the slices "
                       "--num_embedding_partitions=N writes.")


def main(argv):
  del argv
  training_utils.quiet_tensorflow()
  f = flags.FLAGS
  if f.num_partitions < 0:
    sys.exit("error: --num_partitions must be >= 0, got %d" % f.num_partitions)
  try:
    summary = repartition(f.input, f.output, f.num_partitions)
  except ValueError as e:
    sys.exit("error: %s" % e)
  print(describe(summary))


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["input", "output"])
  app.run(main)
