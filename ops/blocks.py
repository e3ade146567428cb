"""Residual blocks: the NextItNet block and its PeterRec-patched variants.

One function covers the three blocks of the original `ops.py`
(`nextitnet_residual_block`, `peter_2mp_serial`, `peter_2mp_parallel`): the
`patch` argument selects where the model patches go.
"""
import tensorflow as tf

from ops import layers

PATCH_INSERTIONS = (None, "serial", "parallel")


def block_scope_name(layer_id, dilation):
  """The original scope of residual block `layer_id` with dilation `dilation`."""
  return "nextitnet_residual_blockdecoder_layer_{}_{}".format(layer_id, dilation)


def residual_block(inputs, dilation, layer_id, kernel_size, causal=True,
                   patch=None, cardinality=1, conv_implementation="atrous",
                   layer_norm_implementation="moments", time_major=False):
  """One residual block of NextItNet, optionally with PeterRec model patches.

  Plain:    conv1(d) -> layer_norm1 -> relu -> conv2(2d) -> layer_norm2 -> relu
  serial:   conv1 -> mp_1 -> layer_norm1 -> relu -> conv2 -> mp_2 -> ln2 -> relu
  parallel: conv1(x) + mp_1(x) -> ln1 -> relu = h; conv2(h) + mp_2(h) -> ln2
            -> relu. Since mp(x) = x + adapter(x), the identity is added on
            top of the convolution (as the original does).
  The block input is added to the output in every case.

  Variables live in scope `nextitnet_residual_blockdecoder_layer_{id}_{d}`:
  `dilated_conv1`, `dilated_conv2`, `layer_norm1`, `layer_norm2` and, with a
  patch, `mp_1`, `mp_2`.

  Args:
    inputs: float32 Tensor [batch_size, seq_length, C].
    dilation: int, dilation of the first convolution (the second uses 2x).
    layer_id: int, position of the block in the stack.
    kernel_size: int.
    causal: bool, causal (NextItNet) or non-causal (GRec) convolutions.
    patch: None, "serial" or "parallel".
    cardinality: int, branches of each model patch.
    conv_implementation: see layers.CONV_IMPLEMENTATIONS.
    layer_norm_implementation: see layers.LAYER_NORM_IMPLEMENTATIONS.
    time_major: `inputs` and the result are [seq_length, batch_size, C]
      (everything but the dilated convolutions works on single positions).

  Returns:
    float32 Tensor [batch_size, seq_length, C] ([seq_length, batch_size, C]
    when time_major).
  """
  if patch not in PATCH_INSERTIONS:
    raise ValueError("Unknown patch insertion %r, expected one of %s" %
                     (patch, PATCH_INSERTIONS))
  channels = int(inputs.shape[-1])
  with tf.compat.v1.variable_scope(block_scope_name(layer_id, dilation),
                                   reuse=tf.compat.v1.AUTO_REUSE):
    hidden = inputs
    for conv_index, conv_dilation in ((1, dilation), (2, 2 * dilation)):
      conv = layers.conv1d(hidden, channels, conv_dilation, kernel_size,
                           causal=causal,
                           name="dilated_conv{}".format(conv_index),
                           implementation=conv_implementation,
                           time_major=time_major)
      patch_name = "mp_{}".format(conv_index)
      if patch == "serial":
        conv = layers.get_mp(conv, cardinality, name=patch_name,
                             conv_implementation=conv_implementation)
      elif patch == "parallel":
        conv = conv + layers.get_mp(hidden, cardinality, name=patch_name,
                                    conv_implementation=conv_implementation)
      normalized = layers.layer_norm(
          conv, name="layer_norm{}".format(conv_index),
          implementation=layer_norm_implementation)
      hidden = tf.nn.relu(normalized)
    return inputs + hidden
