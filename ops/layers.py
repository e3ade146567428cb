"""Primitive layers of NextItNet / GRec / PeterRec, as in the original `ops.py`.

Every function here is a small pure graph builder on `tf.compat.v1`: it
creates its variables with `tf.compat.v1.get_variable` under the scope name of
the original code, so checkpoints written by the original TF 1.7 code restore
into these graphs and the other way round.
"""
import math

import tensorflow as tf

# The ways to compute the same dilated convolution. All use the same
# `weight` variable of shape [1, kernel_size, in_channels, out_channels] and
# give the same outputs up to float32 rounding (tests check all of them
# against the golden files).
#   atrous: tf.nn.atrous_conv2d, exactly the original (SpaceToBatch reshapes).
#   conv2d: tf.nn.conv2d with `dilations`, no SpaceToBatch.
#   matmul: one matrix product per kernel tap over only the positions whose
#           input is not padding, on time-major activations where a time
#           shift is a contiguous block of rows (`_conv1d_taps`); fastest on
#           CPU. The backbone keeps its activations time-major with it.
CONV_IMPLEMENTATIONS = ("atrous", "conv2d", "matmul")

# Two ways to compute the same layer normalization (see `layer_norm`):
#   moments:  tf.nn.moments and automatic differentiation, as the original.
#   analytic: rsqrt and a hand-written gradient; fewer, cheaper ops.
LAYER_NORM_IMPLEMENTATIONS = ("moments", "analytic")

# How the gradient of an embedding table reaches the optimizer (see `gather`):
#   sparse: IndexedSlices, as the original (TF1 Adam's sparse update).
#   dense:  one dense Tensor (TF1 Adam's fused dense update, the same math).
EMBEDDING_GRADIENTS = ("sparse", "dense")


def get_shape_list(tensor, expected_rank=None, name=None):
  """Returns the shape of `tensor`, static dimensions as ints, others as tensors.

  Args:
    tensor: a tf.Tensor.
    expected_rank: optional int or list of ints; raises ValueError otherwise.
    name: optional name used in the error message.

  Returns:
    A list with one entry per dimension.
  """
  if expected_rank is not None:
    ranks = expected_rank if isinstance(expected_rank, (list, tuple)) else [
        expected_rank]
    actual = tensor.shape.ndims
    if actual not in ranks:
      raise ValueError("Tensor %s has rank %s, expected %s (shape %s)" %
                       (name or tensor.name, actual, ranks, tensor.shape))
  static = tensor.shape.as_list()
  dynamic = tf.shape(tensor)
  return [dim if dim is not None else dynamic[i] for i, dim in enumerate(static)]


def gather(params, indices, gradient="sparse", name=None):
  """Rows of an embedding table: `tf.gather(params, indices)`.

  The forward value is the same either way; `gradient` only chooses how the
  gradient with respect to `params` is represented.

  "sparse" (as `tf.nn.embedding_lookup` in the original): IndexedSlices,
  which TF1's AdamOptimizer applies with its sparse path. That path is not
  lazy: it decays every row of both moments and updates every row of the
  table, in about ten separate full-size ops (and the scatters put the
  variable in copy-on-read mode, so each read copies it).

  "dense": the gradient is summed into one dense Tensor of the table's
  shape, which Adam applies with its single fused kernel. The update is
  the same (Adam's sparse path computes m = b1*m + (1-b1)*g and
  v = b2*v + (1-b2)*g^2 for every row, g = 0 for rows not in the batch,
  exactly the dense formula), up to float32 rounding, and costs fewer
  passes over the table.

  A table partitioned along its rows (a PartitionedVariable, or a list of
  row blocks, see `row_partitioner`) is looked up with
  `tf.nn.embedding_lookup`'s "div" strategy, which is the row layout of
  TensorFlow's partitioners: each block gathers its own rows (next to the
  block, on its parameter server) and gets its own gradient, IndexedSlices
  ("sparse") or a dense Tensor of the block's shape ("dense").

  Args:
    params: a variable or Tensor [num_rows, ...], or its row blocks.
    indices: int Tensor of any shape, or a list of them (several lookups
      from the same table share one dense gradient).
    gradient: one of EMBEDDING_GRADIENTS.
    name: optional name of the gather.

  Returns:
    Tensor of shape indices.shape + params.shape[1:] (a list for a list).
  """
  if gradient not in EMBEDDING_GRADIENTS:
    raise ValueError("Unknown embedding gradient %r, expected one of %s" %
                     (gradient, EMBEDDING_GRADIENTS))
  many = isinstance(indices, (list, tuple))
  index_list = list(indices) if many else [indices]
  blocks = shards(params)
  if len(blocks) > 1:
    if gradient == "dense":
      blocks = [_with_dense_gradient(block) for block in blocks]
    rows = [tf.nn.embedding_lookup(blocks, i, name=name) for i in index_list]
  elif gradient == "sparse":
    rows = [tf.nn.embedding_lookup(params, i, name=name) for i in index_list]
  else:
    table = _with_dense_gradient(params)
    rows = [tf.gather(table, i, name=name) for i in index_list]
  return rows if many else rows[0]


def shards(table):
  """The variables holding `table`: [table], or its partitions in order.

  Args:
    table: a Variable or Tensor; or a partitioned one (what
      `tf.compat.v1.get_variable(..., partitioner=...)` returns for more
      than one part) or a list of its parts.

  Returns:
    list of Variables or Tensors.
  """
  if isinstance(table, (list, tuple)):
    return list(table)
  if isinstance(table, tf.Variable) or tf.is_tensor(table):
    return [table]
  return list(table)  # a PartitionedVariable iterates over its parts


def row_partitioner(partitions, axis=0):
  """`tf.compat.v1.fixed_size_partitioner(partitions, axis)`, or None for
  0 or 1 partitions (one whole variable, as the original).

  The parts hold consecutive blocks along `axis`, the first
  `size % partitions` of them one row longer (the layout the Saver records
  and `tf.nn.embedding_lookup`'s "div" strategy reads).
  """
  if partitions < 0:
    raise ValueError("partitions must be >= 0, got %d" % partitions)
  if partitions <= 1:
    return None
  return tf.compat.v1.fixed_size_partitioner(partitions, axis=axis)


def whole(variable, axis=0):
  """A variable as one Tensor: a partitioned one concatenated, a list of
  parts concatenated along `axis`; a whole variable unchanged."""
  if isinstance(variable, (list, tuple)):
    return variable[0] if len(variable) == 1 else tf.concat(variable, axis)
  if len(shards(variable)) > 1:
    return tf.convert_to_tensor(variable)  # a PartitionedVariable's concat
  return variable


@tf.custom_gradient
def _with_dense_gradient(params):
  """Identity whose gradient is converted from IndexedSlices to a Tensor."""
  def grad(upstream):
    return tf.convert_to_tensor(upstream)
  return tf.identity(params), grad


def split_rows(tensor, towers):
  """`tensor` cut along axis 0 into `towers` parts of near-equal static size.

  Args:
    tensor: Tensor whose first dimension is static.
    towers: int >= 1.

  Returns:
    list of `towers` Tensors ([tensor] when towers is 1).
  """
  if towers == 1:
    return [tensor]
  rows = tensor.shape[0]
  if rows is None:
    raise ValueError("split_rows needs a static first dimension, got %s" %
                     tensor.shape)
  sizes = [rows // towers + (1 if i < rows % towers else 0)
           for i in range(towers)]
  return tf.split(tensor, sizes, axis=0)


def conv1d(inputs, output_channels, dilation=1, kernel_size=1, causal=False,
           name="dilated_conv", implementation="atrous", reuse=None,
           time_major=False, output_partitions=1):
  """Dilated 1-D convolution over the time axis (original `ops.conv1d`).

  Variables, in scope `name`: `weight` [1, kernel_size, C_in, output_channels]
  (truncated normal, stddev 0.02, seed 1) and `bias` [output_channels] (zeros).

  Causal: the input is left-padded with (kernel_size - 1) * dilation zeros and
  convolved VALID, so output t sees inputs <= t. Non-causal: SAME padding
  (for kernel 3: `dilation` zeros on each side).

  Args:
    inputs: float32 Tensor [batch_size, seq_length, C_in].
    output_channels: int, C_out.
    dilation: int dilation rate.
    kernel_size: int kernel width.
    causal: bool.
    name: variable scope name.
    implementation: one of CONV_IMPLEMENTATIONS.
    reuse: passed to the variable scope (AUTO_REUSE to share the variables).
    time_major: `inputs` (and the result) are [seq_length, batch_size, C]
      instead. "matmul" works time-major (and transposes batch-major
      inputs); "atrous" and "conv2d" transpose time-major inputs.
    output_partitions: `weight` and `bias` split along the output channels
      into this many variables (`row_partitioner`; 0 or 1: one each), put
      together for the convolution. Checkpoints keep the full names.

  Returns:
    float32 Tensor [batch_size, seq_length, output_channels] (time-major:
    [seq_length, batch_size, output_channels]).
  """
  if implementation not in CONV_IMPLEMENTATIONS:
    raise ValueError("Unknown conv implementation %r, expected one of %s" %
                     (implementation, CONV_IMPLEMENTATIONS))
  in_channels = inputs.shape[-1]
  with tf.compat.v1.variable_scope(name, reuse=reuse):
    weight = whole(tf.compat.v1.get_variable(
        "weight", [1, kernel_size, in_channels, output_channels],
        initializer=tf.compat.v1.truncated_normal_initializer(
            stddev=0.02, seed=1),
        partitioner=row_partitioner(output_partitions, axis=3)))
    bias = whole(tf.compat.v1.get_variable(
        "bias", [output_channels],
        initializer=tf.compat.v1.constant_initializer(0.0),
        partitioner=row_partitioner(output_partitions)))

    if kernel_size == 1 and implementation == "matmul":
      # A 1x1 convolution is a product over rows, in either layout.
      return _conv1d_as_matmul(inputs, weight, bias, 1, 1, causal)
    if implementation == "matmul":
      if not time_major:
        inputs = tf.transpose(inputs, [1, 0, 2])
      out = _conv1d_taps(inputs, weight, bias, dilation, kernel_size, causal)
      return out if time_major else tf.transpose(out, [1, 0, 2])
    if time_major:
      return tf.transpose(
          _conv1d_batch_major(tf.transpose(inputs, [1, 0, 2]), weight, bias,
                              dilation, kernel_size, causal, implementation),
          [1, 0, 2])
    return _conv1d_batch_major(inputs, weight, bias, dilation, kernel_size,
                               causal, implementation)


def _conv1d_batch_major(inputs, weight, bias, dilation, kernel_size, causal,
                        implementation):
  """atrous / conv2d on [batch_size, seq_length, C_in] inputs."""
  if causal:
    inputs = tf.pad(inputs, [[0, 0], [(kernel_size - 1) * dilation, 0],
                             [0, 0]])
    padding = "VALID"
  else:
    padding = "SAME"
  expanded = tf.expand_dims(inputs, axis=1)
  if implementation == "atrous":
    out = tf.compat.v1.nn.atrous_conv2d(
        expanded, weight, rate=dilation, padding=padding)
  else:
    out = tf.compat.v1.nn.conv2d(
        expanded, weight, strides=[1, 1, 1, 1], padding=padding,
        dilations=[1, 1, dilation, 1])
  return tf.squeeze(out + bias, [1])


def _conv1d_taps(inputs, weight, bias, dilation, kernel_size, causal):
  """The dilated convolution as one product per tap, time-major.

  With x time-major and flattened to rows r = t * batch_size + b, output t
  is sum_j x[t - s_j] @ W[j] with s_j = pad_left - j * dilation. For tap j
  only the rows whose input position t - s_j exists contribute: a
  contiguous block of (T - |s_j|) * batch_size rows, multiplied alone and
  placed with a block of zero rows above (s_j > 0) or below (s_j < 0). Taps
  that only ever see padding (|s_j| >= T: long dilations on short
  sequences) are skipped. Against one product over the k stacked shifted
  copies (`_conv1d_as_matmul`) this skips the products with the zero padding
  (about a fifth of the work with dilations [1, 4] * 4 on 20 positions) and
  builds no [positions, k * C] copy; the gradients are blocks of rows too.
  Needs a static seq_length (otherwise falls back to `_conv1d_as_matmul`).

  Args:
    inputs: float32 [seq_length, batch_size, C_in].

  Returns:
    float32 [seq_length, batch_size, C_out].
  """
  seq_length, batch_size, in_channels = get_shape_list(inputs, expected_rank=3)
  output_channels = int(weight.shape[-1])
  if not isinstance(seq_length, int):
    batch_major = tf.transpose(inputs, [1, 0, 2])
    return tf.transpose(_conv1d_as_matmul(batch_major, weight, bias, dilation,
                                          kernel_size, causal), [1, 0, 2])
  static_batch = isinstance(batch_size, int)
  total_pad = (kernel_size - 1) * dilation
  pad_left = total_pad if causal else total_pad // 2
  rows = tf.reshape(inputs, [-1, in_channels])
  kernels = tf.unstack(tf.reshape(weight, [kernel_size, in_channels,
                                           output_channels]))
  products = []
  for j in range(kernel_size):
    shift = pad_left - j * dilation
    if abs(shift) >= seq_length:
      continue
    if shift == 0:
      products.append(tf.matmul(rows, kernels[j]))
      continue
    kept = (seq_length - abs(shift)) * batch_size
    skipped = abs(shift) * batch_size
    if static_batch:
      # split, not slice: its gradient is a concat, not a Pad.
      sizes = [kept, skipped] if shift > 0 else [skipped, kept]
      block = tf.split(rows, sizes, axis=0)[0 if shift > 0 else 1]
    else:
      begin = 0 if shift > 0 else skipped
      block = tf.slice(rows, tf.stack([begin, 0]), tf.stack([kept, -1]))
    product = tf.matmul(block, kernels[j])
    zeros = tf.zeros(tf.stack([skipped, output_channels]))
    products.append(tf.concat([zeros, product] if shift > 0 else
                              [product, zeros], axis=0))
  if not products:  # every tap reads padding only: the output is the bias
    products.append(tf.zeros(tf.stack([seq_length * batch_size,
                                       output_channels])))
  out = tf.nn.bias_add(tf.add_n(products), bias)
  return tf.reshape(out, [seq_length, -1, output_channels])


def _conv1d_as_matmul(inputs, weight, bias, dilation, kernel_size, causal):
  """The dilated convolution as one matrix product over shifted inputs.

  Output t is sum_j x[t + j*d - pad_left] @ W[j]; stacking the k shifted views
  on the channel axis turns this into [B*T, k*C_in] @ [k*C_in, C_out]. Used
  for 1x1 convolutions (a plain product over rows, in any layout) and when
  the sequence length is not static. The views are strided slices of a
  padded copy; with a static length `_conv1d_taps` is much cheaper (the
  gradient of these slices, StridedSliceGrad, alone took 30% of a NextItNet
  pretraining step; benchmarks/README.md).
  """
  batch_size, seq_length, in_channels = get_shape_list(inputs, expected_rank=3)
  output_channels = weight.shape[-1]
  total_pad = (kernel_size - 1) * dilation
  pad_left = total_pad if causal else total_pad // 2
  if kernel_size == 1:
    stacked = inputs
  else:
    padded = tf.pad(inputs, [[0, 0], [pad_left, total_pad - pad_left], [0, 0]])
    shifted = [padded[:, j * dilation:j * dilation + seq_length, :]
               for j in range(kernel_size)]
    stacked = tf.concat(shifted, axis=-1)
  flat = tf.reshape(stacked, [-1, kernel_size * in_channels])
  kernel = tf.reshape(weight, [kernel_size * in_channels, output_channels])
  out = tf.matmul(flat, kernel) + bias
  return tf.reshape(out, [batch_size, seq_length, output_channels])


def layer_norm(inputs, name, epsilon=1e-8, trainable=True,
               implementation="moments"):
  """Layer normalization over the last axis (original `ops.layer_norm`).

  Variables, in scope `name`: `beta` [C] (zeros) and `gamma` [C] (ones).
  Output: gamma * (x - mean) / sqrt(variance + epsilon) + beta, with the
  mean and the (biased) variance over the last axis.

  Args:
    inputs: float32 Tensor [..., C].
    name: variable scope name (`layer_norm1`, `layer_norm2`).
    epsilon: added to the variance.
    trainable: whether beta and gamma are trainable.
    implementation: one of LAYER_NORM_IMPLEMENTATIONS. "moments" is the
      original graph (`tf.nn.moments`, a division, TensorFlow's automatic
      gradient: about 30 small ops per layer forward and backward).
      "analytic" computes the same function with `rsqrt` and a hand-written
      gradient (the textbook layer-norm backward pass, 12 ops): the same
      values up to float32 rounding, 1.5-3x less time on 2 CPU cores
      (benchmarks/README.md).

  Returns:
    float32 Tensor of the shape of `inputs`.
  """
  if implementation not in LAYER_NORM_IMPLEMENTATIONS:
    raise ValueError("Unknown layer norm implementation %r, expected one of "
                     "%s" % (implementation, LAYER_NORM_IMPLEMENTATIONS))
  channels = int(inputs.shape[-1])
  with tf.compat.v1.variable_scope(name):
    beta = tf.compat.v1.get_variable(
        "beta", [channels], initializer=tf.compat.v1.constant_initializer(0),
        trainable=trainable)
    gamma = tf.compat.v1.get_variable(
        "gamma", [channels], initializer=tf.compat.v1.constant_initializer(1),
        trainable=trainable)
    if implementation == "analytic":
      return _layer_norm_analytic(inputs, gamma, beta, epsilon)
    mean, variance = tf.nn.moments(inputs, axes=[inputs.shape.ndims - 1],
                                   keepdims=True)
    normalized = (inputs - mean) / tf.sqrt(variance + epsilon)
    # bias_add, not `+ beta`: the same sum, but it keeps TF 2.15's oneDNN
    # remapper from matching its instance-norm fusion, which crashes the
    # process ("CHECK failed: key not found: value") when gamma and beta are
    # variables and a relu follows.
    return tf.nn.bias_add(gamma * normalized, beta)


def _layer_norm_analytic(inputs, gamma, beta, epsilon):
  """gamma * xhat + beta with xhat = (x - mean) * rsqrt(var + eps).

  Backward pass, with g = dy * gamma and means over the last axis:
    dx     = rsqrt(var + eps) * (g - mean(g) - xhat * mean(g * xhat))
    dgamma = sum over the other axes of dy * xhat
    dbeta  = sum over the other axes of dy
  TensorFlow only runs the parts a fetch needs (no dgamma for a frozen
  layer norm). Computed on the [rows, C] view of the input: 2-D broadcasts
  are cheaper than 3-D ones in TensorFlow's CPU kernels (up to 15% of the
  layer norm at fine-tuning sizes).
  """
  channels = int(inputs.shape[-1])
  shape = get_shape_list(inputs)

  @tf.custom_gradient
  def normalize(x, scale, offset):
    mean = tf.reduce_mean(x, axis=1, keepdims=True)
    centered = x - mean
    variance = tf.reduce_mean(tf.square(centered), axis=1, keepdims=True)
    inverse_std = tf.math.rsqrt(variance + epsilon)
    x_hat = centered * inverse_std
    # bias_add: see the "moments" branch of layer_norm.
    output = tf.nn.bias_add(scale * x_hat, offset)

    def grad(d_output):
      d_scale = tf.reduce_sum(d_output * x_hat, axis=0)
      d_offset = tf.reduce_sum(d_output, axis=0)
      d_x_hat = d_output * scale
      d_x = inverse_std * (
          d_x_hat - tf.reduce_mean(d_x_hat, axis=1, keepdims=True) -
          x_hat * tf.reduce_mean(d_x_hat * x_hat, axis=1, keepdims=True))
      return d_x, d_scale, d_offset

    return output, grad

  rows = tf.reshape(inputs, [-1, channels])
  return tf.reshape(normalize(rows, gamma, beta), shape)


def gelu(x):
  """GELU, tanh approximation (as in BERT and the original `ops.gelu`).

  Args:
    x: float Tensor of any shape.

  Returns:
    Tensor of the same shape.
  """
  cdf = 0.5 * (1.0 + tf.tanh(
      (math.sqrt(2 / math.pi) * (x + 0.044715 * tf.pow(x, 3)))))
  return x * cdf


def patch_hidden_size(channels, cardinality):
  """Width of one patch branch: C // (4 * cardinality).

  The original computes C / (cardinality * 4), an integer in Python 2; we use
  integer division explicitly (docs/DEVIATIONS.md).
  """
  hidden_size = channels // (cardinality * 4)
  if hidden_size < 1:
    raise ValueError("cardinality %d is too large for %d channels: each patch "
                     "branch would have %d/%d = 0 units" %
                     (cardinality, channels, channels, cardinality * 4))
  return hidden_size


def get_mp(inputs, cardinality=1, name="mp", conv_implementation="atrous"):
  """Model patch (adapter) of PeterRec (original `ops.get_mp`).

  For i in range(cardinality): 1x1 conv `mp_conv1_down_{i}` to
  C // (4 * cardinality) units -> GELU -> 1x1 conv `mp_conv1_up_{i}` back to C.
  The branches are summed and added to the input. Cardinality 1 is the
  ResNet-style patch, more is ResNeXt-style.

  Args:
    inputs: float32 Tensor [batch_size, seq_length, C].
    cardinality: number of branches.
    name: variable scope (`mp_1` or `mp_2`).
    conv_implementation: see CONV_IMPLEMENTATIONS.

  Returns:
    float32 Tensor [batch_size, seq_length, C]: inputs + sum of branches.
  """
  with tf.compat.v1.variable_scope(name):
    channels = int(inputs.shape[-1])
    hidden_size = patch_hidden_size(channels, cardinality)
    branches = []
    for i in range(cardinality):
      down = conv1d(inputs, hidden_size, name="mp_conv1_down_{}".format(i),
                    implementation=conv_implementation)
      up = conv1d(gelu(down), channels, name="mp_conv1_up_{}".format(i),
                  implementation=conv_implementation)
      branches.append(up)
    return inputs + tf.add_n(branches)
