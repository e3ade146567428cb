"""What a user meets on the command line: bad input refused in one line,
odd but harmless input accepted, output files readable by others, metrics
printed beside a user-independent reference."""
import json
import os
import re
import stat
import sys

import pytest

from tests.test_reliability import (FINETUNE_SCRIPT, PRETRAIN_SCRIPT,
                                    TINY_FINETUNE_FLAGS, TINY_PRETRAIN_FLAGS,
                                    finetune_world, pretrain_data,
                                    run_command)

CONVERT = [sys.executable, "-m", "tfrecord_tools.convert_csv",
           "--kind=pretrain", "--test_fraction=0"]


def _convert(tmp_path, text, *flags):
  path = tmp_path / "in.csv"
  path.write_text(text)
  out = tmp_path / "out"
  result = run_command(CONVERT + ["--input_csv=%s" % path,
                                  "--output_dir=%s" % out] + list(flags))
  return result, out


def _one_line_error(result, message):
  assert result.returncode != 0
  lines = [l for l in result.stdout.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1 and message in lines[0], result.stdout[-2000:]
  assert "Traceback" not in result.stdout


def test_trailing_blank_lines_are_ignored_inside_they_are_errors(tmp_path):
  result, out = _convert(tmp_path, "1,2,3\n4,5,6\n3,1,2\n\n\n")
  assert result.returncode == 0, result.stdout[-2000:]
  assert (out / "item_vocab.txt").read_text().split() == [
      "<UNK>", "1", "2", "3", "4", "5", "6"]
  result, _ = _convert(tmp_path, "1,2,3\n\n4,5,6\n", "--overwrite")
  _one_line_error(result, "line 2: empty sequence")


def test_a_header_line_is_warned_about_and_skipped_on_request(tmp_path):
  text = "item1,item2,item3\n1,2,3\n2,3,1\n3,1,2\n"
  result, out = _convert(tmp_path, text)
  assert result.returncode == 0, result.stdout[-2000:]
  assert "looks like a header (item1,item2,item3" in result.stdout
  assert "--skip_header" in result.stdout
  result, out = _convert(tmp_path, text, "--skip_header", "--overwrite")
  assert result.returncode == 0, result.stdout[-2000:]
  assert "looks like a header" not in result.stdout
  assert (out / "item_vocab.txt").read_text().split() == [
      "<UNK>", "1", "2", "3"]


@pytest.mark.parametrize("flag", ["--num_train_steps=-5",
                                  "--num_train_steps=0",
                                  "--train_batch_size=0"])
def test_finetune_refuses_non_positive_budgets(tmp_path, flag):
  data_dir = finetune_world(str(tmp_path))
  result = run_command([sys.executable, FINETUNE_SCRIPT,
                        "--data_dir=" + data_dir,
                        "--output_dir=%s" % (tmp_path / "out")] +
                       TINY_FINETUNE_FLAGS + [flag])
  name, value = flag[2:].split("=")
  _one_line_error(result, "--%s must be positive, got %s" % (name, value))
  assert not (tmp_path / "out").exists()


def test_pretrain_refuses_non_positive_steps(tmp_path):
  data_dir = pretrain_data(str(tmp_path))
  result = run_command([sys.executable, PRETRAIN_SCRIPT,
                        "--data_dir=" + data_dir,
                        "--output_dir=%s" % (tmp_path / "model"),
                        "--num_train_steps=-5"] + TINY_PRETRAIN_FLAGS)
  _one_line_error(result, "--num_train_steps must be positive, got -5")


def test_outputs_are_readable_by_others(tmp_path):
  data_dir = finetune_world(str(tmp_path))
  out = tmp_path / "out"
  old = os.umask(0o022)
  try:
    result = run_command([sys.executable, FINETUNE_SCRIPT,
                          "--data_dir=" + data_dir, "--output_dir=%s" % out,
                          "--num_train_steps=4", "--tf_random_seed=1"] +
                         TINY_FINETUNE_FLAGS)
  finally:
    os.umask(old)
  assert result.returncode == 0, result.stdout[-3000:]
  for name in ("metrics.json", "parameters.json", "best/best.json",
               "task_patch/task_patch.json"):
    mode = stat.S_IMODE(os.stat(out / name).st_mode)
    assert mode == 0o644, (name, oct(mode))
  # The metrics come with a user-independent yardstick, printed and stored.
  with open(out / "metrics.json") as f:
    summary = json.load(f)
  reference = summary["user_independent_reference"]
  assert set(reference) == {"mrr@5", "hr@5", "ndcg@5"}
  row = [l for l in result.stdout.splitlines() if l.startswith("| hr@5 ")]
  assert len(row) == 1
  assert row[0].split("|")[3].strip() == "%.4f" % reference["hr@5"]
  assert "| metric " in result.stdout and "| reference |" in result.stdout


def _messages(output):
  """Output lines without absl's "I1202 07:57:16.04 123 file.py:12] " prefix."""
  return [re.sub(r"^[IWEF]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ", "", line)
          for line in output.splitlines() if line.strip()]


@pytest.mark.parametrize("script", ["finetune", "pretrain"])
def test_a_300_step_run_prints_a_screenful_with_progress(tmp_path, script):
  if script == "finetune":
    command = [sys.executable, FINETUNE_SCRIPT,
               "--data_dir=" + finetune_world(str(tmp_path)),
               "--output_dir=%s" % (tmp_path / "out")] + TINY_FINETUNE_FLAGS
  else:
    command = [sys.executable, PRETRAIN_SCRIPT,
               "--data_dir=" + pretrain_data(str(tmp_path)),
               "--output_dir=%s" % (tmp_path / "out")] + TINY_PRETRAIN_FLAGS
  result = run_command(command + ["--log_step_count_steps=50",
                                  {"finetune": "--num_train_steps=300",
                                   "pretrain": "--num_train_steps=300"}[script]])
  assert result.returncode == 0, result.stdout[-3000:]
  messages = _messages(result.stdout)
  assert len(messages) <= 60, "\n".join(messages)
  assert len(set(messages)) == len(messages), "\n".join(messages)
  progress = [m for m in messages if re.match(
      r"step \d+/300 \(\d+%\): loss [\d.]+, .*elapsed [\d:]+, ETA [\d:]+$",
      m)]
  assert len(progress) == 6, "\n".join(messages)  # every 50 of 300 steps
  assert not [m for m in messages if "deprecat" in m.lower()]
  assert not [m for m in messages if "name = " in m]  # variables: -v 1


def _signature_outputs(saved_model):
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  proto = saved_model_pb2.SavedModel()
  proto.ParseFromString((saved_model / "saved_model.pb").read_bytes())
  return set(proto.meta_graphs[0].signature_def["serving_default"].outputs)


def test_the_task_is_decided_at_conversion_and_every_command_reads_it(
    tmp_path):
  # Gender-like data: one label of two per user. Converted without --task.
  lines = ["i%d,i%d,i%d,,%s" % (u % 7, (u + 1) % 7, (u + 3) % 7,
                                "F" if u % 2 else "M") for u in range(60)]
  csv = tmp_path / "gender.csv"
  csv.write_text("\n".join(lines) + "\n")
  data_dir = tmp_path / "data"
  result = run_command([sys.executable, "-m", "tfrecord_tools.convert_csv",
                        "--kind=finetune", "--refit_source_vocab",
                        "--input_csv=%s" % csv, "--output_dir=%s" % data_dir])
  assert result.returncode == 0, result.stdout[-2000:]
  assert "task: classification, inferred (every line has one target, 2 " \
         "distinct" in result.stdout
  assert "--task=recommendation" in result.stdout
  assert json.loads((data_dir / "metadata.json").read_text())[
      "task"] == "classification"

  # Fine-tuning without --task: classification, accuracy over both classes.
  out = tmp_path / "out"
  base = [sys.executable, FINETUNE_SCRIPT, "--data_dir=%s" % data_dir,
          "--channels=8", "--dilations=1,2", "--method=peterzero"]
  result = run_command(base + ["--output_dir=%s" % out, "--num_train_steps=4",
                               "--train_batch_size=8"])
  assert result.returncode == 0, result.stdout[-3000:]
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["task"] == "classification"
  assert "accuracy" in metrics["metrics"] and "hr@5" not in metrics["metrics"]

  # A contradicting flag names both sides.
  result = run_command(base + ["--output_dir=%s" % (tmp_path / "other"),
                               "--task=recommendation"])
  _one_line_error(result, "task: --task says recommendation, but the dataset "
                          "%s (metadata.json) says classification" % data_dir)

  # Re-evaluating the task patch and re-exporting need no --task either.
  result = run_command(base + ["--output_dir=%s" % (tmp_path / "patch_eval"),
                               "--task_patch=%s" % (out / "task_patch"),
                               "--do_train=false"])
  assert result.returncode == 0, result.stdout[-3000:]
  patch_metrics = json.loads(
      (tmp_path / "patch_eval" / "metrics_task_patch.json").read_text())
  assert patch_metrics["task"] == "classification"
  assert patch_metrics["metrics"]["accuracy"] == pytest.approx(
      metrics["metrics"]["accuracy"])
  export = tmp_path / "export"
  result = run_command(base + ["--output_dir=%s" % out, "--do_train=false",
                               "--do_eval=false", "--export_dir=%s" % export])
  assert result.returncode == 0, result.stdout[-3000:]
  assert "probabilities" in _signature_outputs(export)
  assert json.loads((export / "assets.extra" / "serving_config.json")
                    .read_text())["task"] == "classification"


def test_defaults_do_something_sensible_and_help_shows_them(tmp_path):
  result = run_command([sys.executable, PRETRAIN_SCRIPT, "--helpfull"])
  text = " ".join(result.stdout.split())
  assert "Residual channels C of the network. Default: by --preset " \
         "(default: 64; demo: 64; paper: 256)." in text
  assert ("Training batch size. Default: by --preset (default: 32; demo: 2;"
          in text)
  assert "(default: 'default')" in text
  # Pretraining on a user's file: batch 32 and two epochs, not the demo's
  # batch 2 (80 steps here); evaluated at the end.
  model_dir = tmp_path / "model"
  result = run_command([sys.executable, PRETRAIN_SCRIPT,
                        "--data_dir=" + pretrain_data(str(tmp_path)),
                        "--output_dir=%s" % model_dir, "--channels=8",
                        "--dilations=1,2"])
  assert result.returncode == 0, result.stdout[-3000:]
  config = json.loads((model_dir / "pretrain_config.json").read_text())
  assert (config["preset"], config["train_batch_size"], config["softmax"],
          config["num_train_steps"]) == ("default", 32, "sampled",
                                         2 * 160 // 32)
  # Fine-tuning with no budget flags: several epochs of batch 64 with
  # validations along the way, not one step of 512.
  out = tmp_path / "out"
  result = run_command([sys.executable, FINETUNE_SCRIPT,
                        "--data_dir=" + finetune_world(str(tmp_path)),
                        "--output_dir=%s" % out, "--method=peterzero",
                        "--channels=8", "--dilations=1,2",
                        "--num_eval_negatives=9"])
  assert result.returncode == 0, result.stdout[-3000:]
  summary = json.loads((out / "metrics.json").read_text())
  num_train = summary["plan"]["num_train"]
  assert summary["global_step"] == summary["validation"]["best"]["step"]
  steps = [point["step"] for point in summary["validation"]["history"]]
  assert num_train > 64 and len(steps) >= 4 and steps[-1] > 1, steps


def test_evaluation_progress_shows_done_total_rate_and_eta(monkeypatch):
  import training_utils  # pylint: disable=g-import-not-at-top
  clock = iter([100.0, 103.0, 106.0, 109.0, 112.0, 115.0])
  monkeypatch.setattr(training_utils.time, "time", lambda: next(clock))
  lines = []
  hook = training_utils.EvaluationProgressHook(
      "evaluating the test split", num_examples=1000, batch_size=256,
      every_secs=5.0, log=lines.append)
  hook.after_create_session(None, None)  # t=100
  for _ in range(3):  # t=103 (quiet), 106 (a line), 109 (quiet)
    hook.after_run(None, None)
  hook.end(None)  # t=112: the closing line
  assert lines == [
      "evaluating the test split: 2/4 batches (50%), 85 examples/s, "
      "elapsed 0:06, ETA 0:06",
      "evaluating the test split: 3/4 batches (75%), 64 examples/s, "
      "elapsed 0:12, ETA 0:04"]


def _pretrain_command(tmp_path, *flags):
  return [sys.executable, PRETRAIN_SCRIPT, "--num_train_steps=2"] + \
      TINY_PRETRAIN_FLAGS + list(flags)


def _finetune_command(tmp_path, *flags):
  return [sys.executable, FINETUNE_SCRIPT, "--num_train_steps=2"] + \
      TINY_FINETUNE_FLAGS + list(flags)


@pytest.mark.parametrize("case", [
    "pretrain: mistyped checkpoint", "pretrain: fine-tuning data",
    "pretrain: output_dir of another model", "finetune: mistyped checkpoint",
    "finetune: pretraining data", "finetune: output_dir of other data"])
def test_user_mistakes_end_in_one_line(tmp_path, case):
  pretrain_dir = pretrain_data(str(tmp_path))
  finetune_dir = finetune_world(str(tmp_path))
  missing = str(tmp_path / "no_such_model" / "model.ckpt-1")
  if case == "pretrain: mistyped checkpoint":
    command = _pretrain_command(tmp_path, "--data_dir=" + pretrain_dir,
                                "--output_dir=%s" % (tmp_path / "m"),
                                "--init_checkpoint=" + missing)
    message = "--init_checkpoint: Checkpoint %s does not exist" % missing
  elif case == "pretrain: fine-tuning data":
    command = _pretrain_command(tmp_path, "--data_dir=" + finetune_dir,
                                "--output_dir=%s" % (tmp_path / "m"))
    message = "holds a finetune dataset; this needs --kind=pretrain data"
  elif case == "pretrain: output_dir of another model":
    first = run_command(_pretrain_command(
        tmp_path, "--data_dir=" + pretrain_dir,
        "--output_dir=%s" % (tmp_path / "m")))
    assert first.returncode == 0, first.stdout[-2000:]
    command = _pretrain_command(tmp_path, "--data_dir=" + pretrain_dir,
                                "--output_dir=%s" % (tmp_path / "m"),
                                "--channels=16")
    message = "holds a model of another configuration (channels: 8 -> 16"
  elif case == "finetune: mistyped checkpoint":
    command = _finetune_command(tmp_path, "--data_dir=" + finetune_dir,
                                "--output_dir=%s" % (tmp_path / "out"),
                                "--method=peterrec",
                                "--init_checkpoint=" + missing)
    message = "--init_checkpoint: Checkpoint %s does not exist" % missing
  elif case == "finetune: pretraining data":
    command = _finetune_command(tmp_path, "--data_dir=" + pretrain_dir,
                                "--output_dir=%s" % (tmp_path / "out"))
    message = "holds a pretrain dataset; this needs --kind=finetune data"
  else:
    first = run_command(_finetune_command(
        tmp_path, "--data_dir=" + finetune_dir,
        "--output_dir=%s" % (tmp_path / "out")))
    assert first.returncode == 0, first.stdout[-2000:]
    other = finetune_world(str(tmp_path / "other"), num_targets=6)
    command = _finetune_command(tmp_path, "--data_dir=" + other,
                                "--output_dir=%s" % (tmp_path / "out"))
    message = "of another dataset or configuration, which this run would " \
              "resume from"
  _one_line_error(run_command(command), message)
