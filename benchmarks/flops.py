"""Analytic FLOP counts of one training step (matrix products only).

Counted: every matrix product of the model (the dilated convolutions as
[positions, k*C] x [k*C, C] products, the model patches' 1x1 convolutions,
the softmax / target-head logits), 2 FLOPs per multiply-add. A training step
is the forward pass plus, in the backward pass, one product of the same size
for each input gradient that is needed and one for each weight gradient of
a trained layer. Not counted: layer norm, activations, embedding lookups,
the optimizer and data movement (they are elementwise, O(positions * C)
instead of O(positions * C^2), and are what keeps a small step away from the
matmul peak; see benchmarks/README.md).

Reference points: NextItNet demo pretraining (64 channels,
batch 32, length 20, 1,000 sampled) ~0.95 GFLOP a step; PeterRec serial
fine-tuning (batch 512, length 21) ~10.3 GFLOP a step.
"""
import collections

Flops = collections.namedtuple("Flops", ["forward", "train", "parts"])


def _gemm(m, k, n):
  return 2.0 * m * k * n


def _residual_stack(positions, width, kernel_size, num_blocks, patch,
                    cardinality, backbone_trained):
  """FLOPs of the residual blocks: (forward, backward, parts dict).

  Args:
    positions: batch_size * sequence length.
    width: hidden width C.
    kernel_size: k.
    num_blocks: number of residual blocks (2 dilated convolutions each).
    patch: None, "serial" or "parallel".
    cardinality: branches of each model patch.
    backbone_trained: True when the convolutions are trained (pretraining);
      False for PeterRec (frozen backbone, trained patches).
  """
  conv = _gemm(positions, kernel_size * width, width)
  forward = 2 * num_blocks * conv
  backward = 0.0
  parts = {"convolutions": 0.0, "patches": 0.0}
  if patch is None:
    # Pretraining: weight gradient and input gradient of every convolution
    # (the first one's input gradient reaches the trained embeddings).
    backward = 2 * (2 * num_blocks * conv)
    parts["convolutions"] = forward + backward
    return forward, backward, parts
  hidden = max(1, width // (4 * cardinality))
  patch_forward = cardinality * (_gemm(positions, width, hidden) +
                                 _gemm(positions, hidden, width))
  num_patches = 2 * num_blocks
  patch_total = num_patches * patch_forward
  # Frozen convolutions: input gradients only, and none for the first
  # convolution and the first patch (nothing trained below them).
  conv_backward = (2 * num_blocks - 1) * conv
  patch_backward = ((num_patches - 1) * patch_forward +   # input gradients
                    num_patches * patch_forward)          # weight gradients
  if backbone_trained:
    conv_backward += 2 * num_blocks * conv
  parts["convolutions"] = forward + conv_backward
  parts["patches"] = patch_total + patch_backward
  return (forward + patch_total, conv_backward + patch_backward, parts)


def pretrain_flops(encoder, batch_size, seq_length, channels, kernel_size,
                   num_blocks, item_size, num_sampled, num_predictions=None,
                   softmax="sampled"):
  """One pretraining step of NextItNet ("nextitnet") or GRec ("grec").

  NextItNet: the context is seq_length - 1 positions, every one predicted.
  GRec: seq_length positions, `num_predictions` masked ones predicted per
  sequence.
  """
  if encoder == "nextitnet":
    positions = batch_size * (seq_length - 1)
    predicted = positions
  else:
    positions = batch_size * seq_length
    predicted = batch_size * num_predictions
  forward, backward, parts = _residual_stack(
      positions, channels, kernel_size, num_blocks, None, 1, True)
  if softmax == "sampled":
    # Sampled logits [P, C] x [C, S] plus the true logits (a row-wise dot).
    head = _gemm(predicted, channels, num_sampled) + 2.0 * predicted * channels
  else:
    head = _gemm(predicted, channels, item_size)
  parts["softmax"] = 3 * head  # forward, input and weight gradients
  parts.pop("patches")
  return Flops(forward + head, forward + backward + 3 * head, parts)


def finetune_flops(batch_size, context_length, channels, kernel_size,
                   num_blocks, patch="serial", cardinality=1):
  """One PeterRec fine-tuning step (frozen backbone, trained patches).

  context_length: positions of the backbone input (source length + 1 for
  causal rows, + 2 for non-causal). The head scores one positive and one
  negative target per example.
  """
  positions = batch_size * context_length
  forward, backward, parts = _residual_stack(
      positions, channels, kernel_size, num_blocks, patch, cardinality, False)
  head = 2 * (2.0 * batch_size * channels)
  parts["head"] = 3 * head
  return Flops(forward + head, forward + backward + 3 * head, parts)


def matmul_flops(n):
  """An n x n by n x n product."""
  return _gemm(n, n, n)
