"""Shared test fixtures: locations of the read-only reference data.

Tests never copy these files into the project (MovieLens may not be
redistributed); they read them in place and skip, with the reason, when the
folder is absent (a user's machine has no ``../shared``).
"""
import os

import pytest

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _shared_path(env_name, default_relative):
  return os.path.abspath(
      os.environ.get(env_name, os.path.join(PROJECT_ROOT, default_relative)))


SHARED_DATA_DIR = _shared_path("PETERREC_SHARED_DATA", "../shared/data")
GOLDEN_DIR = _shared_path("PETERREC_GOLDEN_DIR", "../shared/golden")
DEMO_DIR = os.path.join(SHARED_DATA_DIR, "peterrec_demo")
DEMO_CHECKPOINT_DIR = os.path.join(DEMO_DIR, "checkpoints")
PRETRAIN_CHECKPOINT = os.path.join(DEMO_CHECKPOINT_DIR,
                                   "model_nextitnet_transfer_pretrain.ckpt")
CLOZE_CHECKPOINT = os.path.join(DEMO_CHECKPOINT_DIR, "model_nextitnet_cloze")
DEMO_PRETRAIN_CSV = os.path.join(
    DEMO_DIR, "history_sequences_20181014_fajie_transfer_pretrain_small.csv")
DEMO_FINETUNE_CSV = os.path.join(
    DEMO_DIR, "history_sequences_20181014_fajie_transfer_finetune_small.csv")


def require_path(path, env_name="PETERREC_SHARED_DATA"):
  """Returns `path`, or skips the calling test when it does not exist."""
  if not os.path.exists(path):
    pytest.skip("reference data not found at %s (set %s to its folder)" %
                (path, env_name))
  return path


@pytest.fixture
def shared_data_dir():
  return require_path(SHARED_DATA_DIR)


@pytest.fixture
def golden_dir():
  return require_path(GOLDEN_DIR, "PETERREC_GOLDEN_DIR")


@pytest.fixture
def demo_dir():
  return require_path(DEMO_DIR)


def require_checkpoint(prefix):
  """Returns the checkpoint `prefix`, or skips when its .index is absent."""
  require_path(prefix + ".index")
  return prefix


# Modules whose tests start processes or train for more than a few seconds:
# `bash run.sh test -m "not slow"` leaves them out for a quick run.
SLOW_MODULES = frozenset([
    "test_benchmarks", "test_distributed", "test_finetune_demo",
    "test_finetune_transfer", "test_finetune_validation", "test_gfile",
    "test_pretrain_convergence", "test_pretrain_resume", "test_reliability",
    "test_reliability_determinism", "test_reproduce_tables", "test_serving",
    "test_threads", "test_user_errors",
])


# Single tests as slow: the README's commands, and the largest variants of
# parity checks whose smaller variants stay in the quick run.
SLOW_TESTS = (
    "test_readme.py::test_commands_run_in_order_as_written",
    "test_ops_golden.py::test_golden_parity[peterrec_causal_serial_"
    "cardinality4-atrous]",
    "test_ops_golden.py::test_golden_parity[peterrec_causal_serial_"
    "cardinality4-conv2d]",
    "test_ops_fast_paths.py::test_golden_parity_with_the_original_layer_norm"
    "[peterrec_causal_serial_cardinality4]",
    "test_ops_fast_paths.py::test_towers_compute_the_same_loss_and_gradients"
    "[serial-2-17]",
    "test_ops_fast_paths.py::test_towers_compute_the_same_loss_and_gradients"
    "[serial-3-24]",
)


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if (item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES or
        item.nodeid.endswith(SLOW_TESTS)):
      item.add_marker(pytest.mark.slow)
