"""Golden parity: our ops reproduce the original graph code's outputs.

For every file in ../shared/golden (see its README): build the same network
with ops/, restore the authors' checkpoint, set the stored patch and target
weights, feed the stored inputs and compare every stored output.
"""
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from ops import checkpoint as checkpoint_lib
from ops import heads
from ops import layers
from ops import modeling
from ops import networks
from tests import conftest

RTOL = 1e-5
ATOL = 1e-5
GOLDEN_FILES = sorted(glob.glob(os.path.join(conftest.GOLDEN_DIR, "*.npz")))


def _golden_ids():
  if not GOLDEN_FILES:
    return ["golden-files-absent"]
  return [os.path.basename(path)[:-4] for path in GOLDEN_FILES]


def _golden_params():
  return GOLDEN_FILES or [None]


def run_golden_case(golden, conv_implementation):
  """Builds the case's graph, restores, seeds, runs; returns the outputs."""
  case = json.loads(str(golden["config"]))
  config = modeling.ModelConfig(
      item_size=case["item_size"], channels=case["channels"],
      dilations=case["dilations"], kernel_size=case["kernel"],
      causal=case["causal"], conv_implementation=conv_implementation)
  patch = None if case["insertion"] == "none" else case["insertion"]
  is_peterrec = case["case"].startswith("peterrec")
  checkpoint_path = os.path.join(conftest.DEMO_CHECKPOINT_DIR,
                                 case["checkpoint"])
  seeded = {k: golden[k] for k in golden.files if "/" in k}

  with tf.Graph().as_default():
    context = tf.constant(golden["context"])
    fetches = {}
    if is_peterrec:
      user, hidden = networks.peterrec_user_vectors(
          context, config, patch, case["cardinality"])
      table = heads.target_embedding_table(case["target_item_size"],
                                           config.hidden_size)
      fetches["user_repr"] = user
      fetches["scores"] = heads.candidate_scores(
          user, table, tf.constant(golden["candidates"]))
      fetches["pos_logits"] = heads.target_logits(
          user, table, tf.constant(golden["targets"]))
    else:
      hidden, _ = modeling.backbone(context, config)
      softmax = "full" if config.causal else "sampled"
      output_layer = networks.pretrain_output_layer(config, softmax)
      logits = networks.item_logits(modeling.last_position(hidden), config,
                                    output_layer)
      fetches["logits_last"] = logits
      fetches["probs_last"] = tf.nn.softmax(logits)
      fetches["top5"] = tf.nn.top_k(logits, k=5).indices
    fetches["hidden"] = hidden

    variables = tf.compat.v1.global_variables()
    assignment_map, restored = checkpoint_lib.assignment_map_from_checkpoint(
        variables, checkpoint_path, exclude=lambda name: "mp" in name)
    tf.compat.v1.train.init_from_checkpoint(checkpoint_path, assignment_map)
    graph_names = {checkpoint_lib.variable_name(v) for v in variables}
    # Every variable is either restored or set from the file: nothing keeps a
    # random initial value.
    assert len(restored) == case["restored_variables"]
    assert graph_names == restored | set(seeded), (
        sorted(graph_names ^ (restored | set(seeded))))
    by_name = {checkpoint_lib.variable_name(v): v for v in variables}
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      for name, value in seeded.items():
        by_name[name].load(value, sess)
      return sess.run(fetches)


@pytest.mark.parametrize("conv_implementation", layers.CONV_IMPLEMENTATIONS)
@pytest.mark.parametrize("golden_path", _golden_params(), ids=_golden_ids())
def test_golden_parity(golden_path, conv_implementation):
  conftest.require_path(conftest.GOLDEN_DIR, "PETERREC_GOLDEN_DIR")
  conftest.require_path(conftest.DEMO_CHECKPOINT_DIR)
  golden = np.load(golden_path)
  case = json.loads(str(golden["config"]))
  outputs = run_golden_case(golden, conv_implementation)
  assert sorted(outputs) == sorted(case["output_keys"])
  for key in case["output_keys"]:
    if key == "top5":
      np.testing.assert_array_equal(outputs[key], golden[key])
    else:
      assert outputs[key].shape == golden[key].shape, key
      np.testing.assert_allclose(outputs[key], golden[key], rtol=RTOL,
                                 atol=ATOL, err_msg=key)


def test_every_golden_file_is_covered():
  golden_dir = conftest.require_path(conftest.GOLDEN_DIR, "PETERREC_GOLDEN_DIR")
  names = sorted(os.path.basename(p) for p in
                 glob.glob(os.path.join(golden_dir, "*.npz")))
  assert names == [
      "grec_noncausal.npz", "nextitnet_causal.npz",
      "peterrec_causal_parallel.npz", "peterrec_causal_serial.npz",
      "peterrec_causal_serial_cardinality4.npz",
      "peterrec_noncausal_parallel.npz"
  ]
