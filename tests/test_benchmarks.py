"""The benchmarks run end to end at a tiny size and report consistent figures.

No speed is asserted here (a unit test must not time the machine): the
tests check the analytic FLOP counts against hand-computed ones, and that
`benchmarks/throughput.py` and `benchmarks/ablation.py` run, print their
tables and derive every reported figure from their own measurements.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import flops
from benchmarks import script_runs
from benchmarks import startup
from benchmarks import workloads
from tests import conftest
from tests import test_reliability


def test_pretrain_flops_by_hand():
  # Batch 2, length 3 -> 2 * 2 = 4 predicted positions; C = 2, k = 2,
  # one block (2 convolutions), 3 sampled items.
  count = flops.pretrain_flops("nextitnet", batch_size=2, seq_length=3,
                               channels=2, kernel_size=2, num_blocks=1,
                               item_size=10, num_sampled=3)
  conv = 2 * 4 * (2 * 2) * 2              # [4, kC] x [kC, C]
  head = 2 * 4 * 2 * 3 + 2 * 4 * 2        # sampled logits + true logits
  assert count.forward == 2 * conv + head
  # Backward: a weight and an input gradient per convolution, and the
  # head's input and weight gradients.
  assert count.train == 2 * conv * 3 + head * 3
  assert count.parts == {"convolutions": 2 * conv * 3, "softmax": head * 3}


def test_grec_flops_predict_only_masked_positions():
  count = flops.pretrain_flops("grec", batch_size=2, seq_length=3, channels=2,
                               kernel_size=2, num_blocks=1, item_size=10,
                               num_sampled=3, num_predictions=1,
                               softmax="full")
  conv = 2 * 6 * (2 * 2) * 2              # all 6 positions are context
  head = 2 * 2 * 2 * 10                   # 2 predictions x all 10 items
  assert count.forward == 2 * conv + head
  assert count.train == 6 * conv + 3 * head


def test_finetune_flops_by_hand():
  # Batch 1, 4 positions, C = 8, k = 2, one block, serial patches with
  # hidden width 8 / 4 = 2; the backbone is frozen.
  count = flops.finetune_flops(batch_size=1, context_length=4, channels=8,
                               kernel_size=2, num_blocks=1, patch="serial")
  conv = 2 * 4 * 16 * 8
  patch = 2 * 4 * 8 * 2 + 2 * 4 * 2 * 8
  head = 2 * (2 * 1 * 8)                  # positive and negative dot products
  assert count.forward == 2 * conv + 2 * patch + head
  # Input gradients: the second convolution and the second patch only
  # (nothing trained below the first ones); weight gradients: both patches.
  assert count.train == count.forward + conv + patch + 2 * patch + 2 * head


def test_demo_step_flops_match_the_issue():
  """benchmarks/flops.py: ~0.95 GFLOP a pretraining step, ~10.3 a fine-tuning step."""
  preset = workloads.PRESETS["demo"]
  pretrain = flops.pretrain_flops(
      "nextitnet", preset.pretrain_batch, preset.seq_length, preset.channels,
      preset.kernel_size, len(preset.dilations), preset.num_items,
      workloads.default_num_sampled(preset))
  finetune = flops.finetune_flops(
      preset.finetune_batch, preset.seq_length + 1, preset.channels,
      preset.kernel_size, len(preset.dilations))
  assert pretrain.train / 1e9 == pytest.approx(0.95, abs=0.01)
  assert finetune.train / 1e9 == pytest.approx(10.3, abs=0.1)


def _run_module(module, args, tmp_path):
  process = subprocess.run(
      [sys.executable, "-m", module] + args, cwd=conftest.PROJECT_ROOT,
      env=test_reliability.ENV, capture_output=True, text=True, timeout=600,
      check=False)
  assert process.returncode == 0, process.stderr[-4000:]
  return process.stdout


def test_throughput_smoke_reports_consistent_figures(tmp_path):
  output_json = str(tmp_path / "throughput.json")
  names = ["pretrain_grec", "finetune_serial"]
  stdout = _run_module(
      "benchmarks.throughput",
      ["--preset=smoke", "--reps=2", "--workloads=" + ",".join(names),
       "--json_output=" + output_json, "--work_dir=" + str(tmp_path / "w")],
      tmp_path)
  assert "b/a (speed-up over feed_dict)" in stdout
  assert "matmul peak (2048x2048 float32" in stdout
  with open(output_json) as f:
    results = json.load(f)
  assert results["preset"] == "smoke"
  summary = results["summary"]
  records = results["records"]
  preset = workloads.PRESETS["smoke"]
  # Two reps of a, b, c per workload, and a peak window beside each rep.
  for name in names:
    for variant in ("a", "b", "c", "peak"):
      mine = [r for r in records
              if r["workload"] == name and r["variant"] == variant]
      assert len(mine) == 2, (name, variant)
      assert all(r["steps_per_sec"] > 0 for r in mine)
  peak_windows = [r["steps_per_sec"] for r in records
                  if r["variant"] == "peak"]
  assert summary["peak_gflops"] == pytest.approx(
      max(peak_windows) * 2 * 2048 ** 3 / 1e9)
  for ratio in summary["ratios"]:
    name = ratio["workload"]
    rows = {row["variant"][:3]: row for row in summary["rows"]
            if row["workload"] == name}
    medians = {}
    for variant in ("a", "b", "c"):
      medians[variant] = float(np.median(
          [r["steps_per_sec"] for r in records
           if r["workload"] == name and r["variant"] == variant]))
      assert rows["(%s)" % variant]["steps_per_sec"] == pytest.approx(
          medians[variant])
    batch = (preset.pretrain_batch if name.startswith("pretrain")
             else preset.finetune_batch)
    assert rows["(b)"]["sequences_per_sec"] == pytest.approx(
        medians["b"] * batch)
    assert ratio["b_over_a"] == pytest.approx(medians["b"] / medians["a"])
    assert ratio["c_over_b"] == pytest.approx(medians["c"] / medians["b"])
    assert ratio["b_over_peak"] == pytest.approx(
        medians["b"] * ratio["step_gflop"] / summary["peak_gflops"])
    assert rows["(b)"]["gflops_per_sec"] == pytest.approx(
        medians["b"] * ratio["step_gflop"])
    assert "| %s | %.3f | %.2fx |" % (
        name, ratio["step_gflop"], ratio["b_over_a"]) in stdout


@pytest.mark.parametrize("workload", ["pretrain_nextitnet", "finetune_serial"])
def test_ablation_smoke_prints_each_variant(tmp_path, workload):
  variants = ["feed_dict", "original_graph", "towers", "estimator"]
  stdout = _run_module(
      "benchmarks.ablation",
      ["--preset=smoke", "--reps=1", "--workload=" + workload,
       "--variants=" + ",".join(variants), "--steps=3",
       "--json_output=" + str(tmp_path / "ablation.json")], tmp_path)
  table_rows = [line for line in stdout.splitlines()
                if line.startswith("| ") and "---" not in line]
  assert [row.split(" | ")[0][2:] for row in table_rows[1:]] == variants
  # The baseline's speed-up over itself.
  assert "| 1.00x |" in table_rows[1]
  with open(str(tmp_path / "ablation.json")) as f:
    records = json.load(f)
  assert records


def test_profile_step_accounts_for_the_step_by_category(tmp_path):
  stdout = _run_module(
      "benchmarks.profile_step",
      ["--preset=smoke", "--workload=finetune_serial",
       "--variants=original_graph", "--warmup=2", "--steps=2"], tmp_path)
  lines = stdout.splitlines()
  start = lines.index("| category | ms/step | share |") + 2
  rows = {}
  for line in lines[start:]:
    if not line.startswith("| "):
      break
    name, _, share = [cell.strip() for cell in line.strip("|").split("|")]
    rows[name] = float(share.rstrip("%"))
  # The original graph's dilated convolutions run through space-to-batch.
  assert rows["conv / space-to-batch"] > 0
  assert rows["optimizer"] > 0
  assert sum(rows.values()) == pytest.approx(100, abs=len(rows))



def test_startup_smoke_times_every_phase(tmp_path):
  output_json = str(tmp_path / "startup.json")
  stdout = _run_module(
      "benchmarks.startup",
      ["--preset=smoke", "--reps=1", "--json_output=" + output_json],
      tmp_path)
  with open(output_json) as f:
    runs = json.load(f)["runs"]
  for script in ("nextitnet_pretrain", "peterrec_finetune"):
    (phases,) = runs[script]
    assert all(phases[p] >= 0 for p in ("interpreter",) + startup.PHASES)
    # The phases add up to the time to step 2, each counted once.
    parts = sum(v for k, v in phases.items() if not k.startswith("to "))
    assert parts == pytest.approx(phases["to step 2"], abs=1e-3)
    assert phases["to step 1"] < phases["to step 2"]
  assert "| **to step 1** |" in stdout


def test_evaluation_smoke_agrees_with_the_feed_dict_way(tmp_path):
  output_json = str(tmp_path / "evaluation.json")
  stdout = _run_module(
      "benchmarks.evaluation",
      ["--preset=smoke", "--reps=1", "--eval_batch_size=16",
       "--max_sequences=64", "--json_output=" + output_json], tmp_path)
  with open(output_json) as f:
    records = json.load(f)["records"]
  by_way = {(r["workload"], r["way"]): r for r in records}
  # Full ranking is deterministic: both ways rank the same model's scores.
  assert (by_way["pretrain_full_ranking", "a"]["hr"] ==
          pytest.approx(by_way["pretrain_full_ranking", "b"]["hr"]))
  for record in records:
    assert record["sequences_per_sec"] > 0 and 0 <= record["hr"] <= 1
  assert "| pretrain_full_ranking |" in stdout
  assert "| finetune_sampled |" in stdout


def test_serving_smoke_reports_three_ways(tmp_path):
  output_json = str(tmp_path / "serving.json")
  stdout = _run_module(
      "benchmarks.serving_latency",
      ["--preset=smoke", "--reps=1", "--single_calls=5", "--batch_calls=2",
       "--batch_size=8", "--json_output=" + output_json], tmp_path)
  with open(output_json) as f:
    rows = json.load(f)["rows"]
  assert [r["way"] for r in rows] == ["session", "Predictor", "signature"]
  for row in rows:
    assert 0 < row["p50_ms"] <= row["p99_ms"]
    assert row["users_per_sec"] > 0
  assert "| signature |" in stdout


def test_the_script_runs_with_the_users_environment(monkeypatch):
  monkeypatch.setenv("TF_OVERRIDE_GLOBAL_THREADPOOL", "1")
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
  environment = script_runs.user_environment()
  assert "TF_OVERRIDE_GLOBAL_THREADPOOL" not in environment
  assert environment["TF_CPP_MIN_LOG_LEVEL"] == "2"


def test_suite_smoke_collects_each_benchmark(tmp_path):
  output_json = str(tmp_path / "suite.json")
  stdout = _run_module(
      "benchmarks.suite", ["--preset=smoke", "--reps=1", "--only=startup",
                           "--json_output=" + output_json], tmp_path)
  with open(output_json) as f:
    results = json.load(f)
  assert set(results["seconds"]) == {"startup"}
  assert set(results["startup"]["runs"]) == set(startup.SCRIPTS)
  assert "| **to step 1** |" in stdout
