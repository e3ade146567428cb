"""The NextItNet / GRec backbone and its configuration.

`ModelConfig` holds what is needed to rebuild a backbone; pretraining writes
it next to the checkpoint (`model_config.json`) so fine-tuning rebuilds the
same network without repeating flags.
"""
import copy
import dataclasses
import json
import os
from typing import List

import tensorflow as tf

from ops import blocks
from ops import layers

CONFIG_FILENAME = "model_config.json"


@dataclasses.dataclass
class ModelConfig:
  """Hyperparameters of the backbone (defaults: the original demo code)."""
  item_size: int                      # item vocabulary size, incl. id 0 (<UNK>)
  channels: int = 64                  # embedding width = residual channels C
  dilations: List[int] = dataclasses.field(
      default_factory=lambda: [1, 4, 1, 4, 1, 4, 1, 4])
  kernel_size: int = 3
  causal: bool = True                 # NextItNet (True) or GRec encoder (False)
  has_positional_embedding: bool = False  # GRec option: concat, doubles C
  max_position: int = 100             # rows of the positional table
  conv_implementation: str = "matmul"  # see ops.layers.CONV_IMPLEMENTATIONS
  # see ops.layers.LAYER_NORM_IMPLEMENTATIONS; "moments" is the original graph
  layer_norm_implementation: str = "analytic"
  # see ops.layers.EMBEDDING_GRADIENTS; "sparse" is the original
  embedding_gradients: str = "dense"
  # Row-parallel towers per step (see `num_towers`): 0 = one per CPU core,
  # 1 = the original single chain of ops. Values only, not the math.
  towers: int = 0
  # see ops.heads.SAMPLED_SOFTMAX_IMPLEMENTATIONS; "tf" is the original
  softmax_implementation: str = "split"
  # Variables the item-sized tables are split into (see `partitioned`):
  # 0 or 1 = one variable each, the original.
  embedding_partitions: int = 1

  # Fields that choose how the graph computes, not what it computes or which
  # variables it has: a checkpoint restores whatever their values.
  EXECUTION_FIELDS = ("conv_implementation", "layer_norm_implementation",
                      "embedding_gradients", "towers", "softmax_implementation")
  # Fields that choose how the item-sized variables are split over
  # parameter servers: the graph has other variables (`name/part_<i>`), but
  # a checkpoint holds the same full tensors, and restores, whatever their
  # values.
  PLACEMENT_FIELDS = ("embedding_partitions",)

  @property
  def hidden_size(self):
    """Width of the hidden states (2C with the positional embedding)."""
    return self.channels * (2 if self.has_positional_embedding else 1)

  def to_dict(self):
    return dataclasses.asdict(self)

  def to_json_string(self):
    return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

  @classmethod
  def from_dict(cls, values):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError("Unknown ModelConfig keys: %s" % unknown)
    return cls(**copy.deepcopy(values))

  @classmethod
  def from_json_file(cls, path):
    with tf.io.gfile.GFile(path, "r") as reader:
      return cls.from_dict(json.loads(reader.read()))

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)


# The execution fields of the original TF 1.7 graph (`config.replace(
# **ORIGINAL_EXECUTION)`): the reference that benchmarks/ compares against.
ORIGINAL_EXECUTION = dict(conv_implementation="atrous",
                          layer_norm_implementation="moments",
                          embedding_gradients="sparse", towers=1,
                          softmax_implementation="tf")


def partitioned(config, partitions):
  """`config` with its item-sized tables split into `partitions` variables.

  The item table `allitem_embeddings` and the pretraining output layer
  (`softmax_w`, `softmax_b`, or the full softmax's `logits/weight` and
  `logits/bias`) become `partitions` variables each, consecutive blocks of
  rows (output channels for `logits/weight`), made by
  `tf.compat.v1.fixed_size_partitioner`; a parameter-server cluster puts
  them on its ps tasks in turn. The Saver stores the parts as slices of one
  tensor under the original name, so checkpoints restore into any
  partitioning (networks.PARTITION_AXES lists the split variables). Their
  gradients become sparse (IndexedSlices): a training step then moves only
  the rows it looks up between the trainers and the parameter servers (a
  dense gradient reads every part whole). The values computed are the same.

  Args:
    config: ModelConfig.
    partitions: int; 0 or 1 leaves `config` as it is.

  Returns:
    ModelConfig.
  """
  if partitions < 0:
    raise ValueError("partitions must be >= 0, got %d" % partitions)
  if partitions <= 1:
    return config
  if partitions > config.item_size:
    raise ValueError("cannot split %d items into %d partitions" %
                     (config.item_size, partitions))
  return config.replace(embedding_partitions=partitions,
                        embedding_gradients="sparse")


def unpartitioned(config):
  """`config` without partitions: the whole tables a checkpoint holds."""
  return config.replace(embedding_partitions=1)


def item_embedding_table(item_size, channels, name="allitem_embeddings",
                         partitions=1):
  """The item embedding table `allitem_embeddings` [item_size, channels].

  Truncated normal, stddev 0.02, unseeded (as the original). With
  `partitions` > 1, that many variables `allitem_embeddings/part_<i>` of
  consecutive rows (see `partitioned`).
  """
  return tf.compat.v1.get_variable(
      name, [item_size, channels],
      initializer=tf.compat.v1.truncated_normal_initializer(stddev=0.02),
      partitioner=layers.row_partitioner(partitions))


def positional_embedding(batch_size, seq_length, max_position, channels):
  """Learned positional embedding of the GRec code, scope `dec_pos`.

  Variable `dec_pos/lookup_table_position` [max_position, channels], created
  with the default (Glorot uniform) initializer, no zero padding, no scaling.

  Returns:
    float32 Tensor [batch_size, seq_length, channels].
  """
  with tf.compat.v1.variable_scope("dec_pos"):
    table = tf.compat.v1.get_variable("lookup_table_position",
                                      [max_position, channels],
                                      dtype=tf.float32)
    positions = tf.tile(tf.expand_dims(tf.range(seq_length), 0),
                        [batch_size, 1])
    return tf.nn.embedding_lookup(table, positions)


# Fewest sequences (or rows) a tower gets: smaller ops cost more than the
# parallelism gives back.
MIN_TOWER_SEQUENCES = 8


def default_towers():
  """Towers when ModelConfig.towers is 0: one per CPU core, 1 with a GPU."""
  if tf.config.list_physical_devices("GPU"):
    return 1
  return max(1, os.cpu_count() or 1)


def num_towers(config, batch_size, min_rows=MIN_TOWER_SEQUENCES):
  """How many towers a batch of `batch_size` rows is split into.

  The NextItNet/GRec network treats every sequence (and every position of
  the output head) independently, so a batch can be cut into parts that go
  through the same layers, with the same variables, as separate chains of
  ops: TensorFlow's inter-op threads then run the parts on different cores.
  Outputs are concatenated back, so values and gradients are those of the
  whole batch (up to the order of float32 sums). A dynamic batch size (the
  last partial evaluation batch) is not split.

  Args:
    config: ModelConfig (its `towers`: 0 = `default_towers()`).
    batch_size: Python int, or a Tensor when unknown.
    min_rows: fewest rows per tower.

  Returns:
    int >= 1.
  """
  if config.towers < 0:
    raise ValueError("ModelConfig.towers must be >= 0, got %d" % config.towers)
  if not isinstance(batch_size, int):
    return 1
  towers = config.towers or default_towers()
  return max(1, min(towers, batch_size // max(1, min_rows)))


def backbone(item_ids, config, patch=None, cardinality=1, embedding_table=None):
  """The stack of residual blocks over the item embeddings.

  With more than one tower (`num_towers`), the embedded batch is split into
  row blocks that run through the blocks (same variables) side by side and
  are concatenated at the end.

  Args:
    item_ids: int32 Tensor [batch_size, seq_length] (the context sequence).
    config: ModelConfig.
    patch: None, "serial" or "parallel" (PeterRec model patches).
    cardinality: branches of each patch.
    embedding_table: optional existing `allitem_embeddings` variable; created
      at the current scope when None (in config.embedding_partitions parts).

  Returns:
    (hidden, embedding_table): hidden is float32
    [batch_size, seq_length, config.hidden_size], the output of the last block.
  """
  if embedding_table is None:
    embedding_table = item_embedding_table(
        config.item_size, config.channels,
        partitions=config.embedding_partitions)
  hidden = layers.gather(embedding_table, item_ids,
                         gradient=config.embedding_gradients,
                         name="context_embedding")
  if config.has_positional_embedding:
    batch_size, seq_length = layers.get_shape_list(item_ids, expected_rank=2)
    hidden = tf.concat([
        hidden,
        positional_embedding(batch_size, seq_length, config.max_position,
                             config.channels)
    ], axis=-1)
  towers = num_towers(config, layers.get_shape_list(item_ids, 2)[0])
  # "matmul" convolutions want time-major activations: transpose once here.
  time_major = config.conv_implementation == "matmul"
  outputs = []
  for part in layers.split_rows(hidden, towers):
    if time_major:
      part = tf.transpose(part, [1, 0, 2])
    for layer_id, dilation in enumerate(config.dilations):
      part = blocks.residual_block(
          part, dilation, layer_id, config.kernel_size, causal=config.causal,
          patch=patch, cardinality=cardinality,
          conv_implementation=config.conv_implementation,
          layer_norm_implementation=config.layer_norm_implementation,
          time_major=time_major)
    if time_major:
      part = tf.transpose(part, [1, 0, 2])
    outputs.append(part)
  hidden = outputs[0] if towers == 1 else tf.concat(outputs, axis=0)
  return hidden, embedding_table


def backbone_variable_shapes(config, patch=None, cardinality=1):
  """Names and shapes of the variables `backbone` creates, without a graph.

  Used to compare a checkpoint with a configuration before building anything.

  Returns:
    dict {variable name: list of ints}.
  """
  shapes = {"allitem_embeddings": [config.item_size, config.channels]}
  width = config.hidden_size
  if config.has_positional_embedding:
    shapes["dec_pos/lookup_table_position"] = [config.max_position,
                                               config.channels]
  for layer_id, dilation in enumerate(config.dilations):
    scope = blocks.block_scope_name(layer_id, dilation)
    for index in (1, 2):
      shapes["%s/dilated_conv%d/weight" % (scope, index)] = [
          1, config.kernel_size, width, width]
      shapes["%s/dilated_conv%d/bias" % (scope, index)] = [width]
      shapes["%s/layer_norm%d/beta" % (scope, index)] = [width]
      shapes["%s/layer_norm%d/gamma" % (scope, index)] = [width]
      if patch is not None:
        hidden = layers.patch_hidden_size(width, cardinality)
        for branch in range(cardinality):
          prefix = "%s/mp_%d" % (scope, index)
          shapes["%s/mp_conv1_down_%d/weight" % (prefix, branch)] = [
              1, 1, width, hidden]
          shapes["%s/mp_conv1_down_%d/bias" % (prefix, branch)] = [hidden]
          shapes["%s/mp_conv1_up_%d/weight" % (prefix, branch)] = [
              1, 1, hidden, width]
          shapes["%s/mp_conv1_up_%d/bias" % (prefix, branch)] = [width]
  return shapes


def last_position(hidden):
  """hidden[:, -1]: float32 [batch_size, C] from [batch_size, seq_length, C]."""
  return hidden[:, -1, :]


USER_VECTORS = ("cls", "mean")


def user_representation(hidden, causal, cls_at_start=False, pooling="cls"):
  """The user vector fed to a PeterRec head.

  Causal models use the `[CLS]` slot at the end; the non-causal classifier
  adds the first and the last positions (both are `[CLS]`-like zeros).
  `cls_at_start` is the paper's ablation for causal models: the `[CLS]` slot
  first, so its state sees no item of the user. `pooling="mean"` averages
  the hidden states of every position instead (what the original GRec
  FineAll script does).

  Args:
    hidden: float32 Tensor [batch_size, seq_length, C].
    causal: bool.
    cls_at_start: bool (causal only).
    pooling: "cls" or "mean".

  Returns:
    float32 Tensor [batch_size, C].
  """
  if pooling == "mean":
    return tf.reduce_mean(hidden, axis=1)
  if pooling != "cls":
    raise ValueError("pooling must be one of %s, got %r" % (USER_VECTORS,
                                                           pooling))
  if causal:
    return hidden[:, 0, :] if cls_at_start else last_position(hidden)
  return hidden[:, 0, :] + hidden[:, -1, :]
