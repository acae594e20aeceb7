"""The benchmarks: their projection on hand-made timings, and smoke runs on a tiny
sample that report every figure (no timing asserts).

The smoke runs start TensorFlow and trace models (about 40 s together): slow.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, *args):
  result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.mark.slow
def test_bench_input_reports_every_loader(sample_dir, data_dir, tmp_path):
  out = tmp_path / "input.json"
  _run("tools.bench_input", f"--manual_dir={sample_dir}", f"--data_dir={data_dir}",
       "--limit=128", "--batch_size=32", "--passes=2", "--threads=1", "--stages",
       f"--json={out}")
  figures = json.loads(out.read_text())
  for key in ("seed_loader", "directory_loader", "decode_ceiling/160px", "decode_ceiling/full",
              "pipeline/160px", "pipeline/full", "pipeline_cached/160px",
              "pipeline_cached/full", "decode_ceiling/160px/1_threads", "pipeline/full/1_threads",
              "pipeline_later/160px", "pipeline_later/full",
              "stage/160px/read_parse", "stage/full/decode_shuffled_batches_float32",
              "stage/160px/decode_shuffled_batches", "stage/full/ceiling_batches"):
    assert figures[key] > 0, key
    spread = figures["spread"][key]
    assert len(spread["passes"]) == 2 and spread["min"] <= figures[key] <= spread["max"], key
  assert set(figures["ratios"]) == {
      "pipeline/decode_ceiling/160px", "pipeline/decode_ceiling/full",
      "pipeline/directory_loader/160px", "pipeline/directory_loader/full",
      "pipeline/seed_loader", "pipeline_cached/directory_loader",
      "pipeline/ceiling_batches/160px", "pipeline/ceiling_batches/full",
      "pipeline_later/decode_ceiling/160px", "pipeline_later/decode_ceiling/full"}
  assert all(value > 0 for value in figures["ratios"].values())
  assert figures["per_core"]["pipeline/160px/1_threads"] == figures["pipeline/160px/1_threads"]
  assert figures["machine"]["cores"] >= 1 and "avx512_bf16" in figures["machine"]["cpu_flags"]
  assert figures["machine"]["precision"] in ("float32", "mixed_bfloat16", "mixed_float16")


@pytest.mark.slow
def test_bench_train_reports_throughput_stall_and_memory(data_dir, tmp_path):
  out = tmp_path / "train.json"
  _run("tools.bench_train", f"--data_dir={data_dir}", f"--rss_data_dirs={data_dir},{data_dir}",
       "--steps=3", "--passes=1", "--image_size=48", f"--json={out}")
  figures = json.loads(out.read_text())
  assert figures["pipeline/float32"] > 0 and figures["in_memory/float32"] > 0
  assert 0 <= figures["input_stall/float32"] < 1
  assert figures["pipeline_cached/float32"] > 0 and 0 <= figures["input_stall_cached/float32"] < 1
  assert figures["auto_vs_float32"] > 0
  assert figures["epoch_rss/0"]["peak_rss_mib"] > 100
  assert figures["epoch_rss/1"]["train_images"] == figures["epoch_rss/0"]["train_images"]
  assert figures["rss_ratio_large_vs_small"] > 0
  assert figures["machine"]["cores"] >= 1 and "amx_bf16" in figures["machine"]["cpu_flags"]


@pytest.mark.slow
def test_bench_train_times_every_policy_asked_for_side_by_side(data_dir, tmp_path):
  out = tmp_path / "train.json"
  _run("tools.bench_train", f"--data_dir={data_dir}", "--steps=2", "--passes=1",
       "--image_size=32", "--precisions=float32,mixed_bfloat16,mixed_float16", f"--json={out}")
  figures = json.loads(out.read_text())
  for policy in ("float32", "mixed_bfloat16", "mixed_float16"):
    assert figures[f"pipeline/{policy}"] > 0 and figures[f"in_memory/{policy}"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("phase,cut", [("--nofine_tune", [[1280]]),
                                       ("--fine_tune", [[1, 1, 160]])])
def test_bench_train_compares_a_transfer_phase_plain_and_on_cached_activations(
    data_dir, tmp_path, phase, cut):
  out = tmp_path / "transfer.json"
  _run("tools.bench_train", f"--data_dir={data_dir}", "--model=mnv2", phase, "--steps=2",
       "--passes=1", "--image_size=32", "--batch_size=8", f"--json={out}")
  figures = json.loads(out.read_text())
  assert figures["cut"] == cut  # the pooled features, or block_13_project at 32 px
  for key in ("plain_images_per_second", "extraction_images_per_second",
              "top_images_per_second", "top_inference_images_per_second"):
    assert figures[key] > 0, key
  assert figures["train_images"] > 0 and figures["cached_10_epochs_seconds"] > 0
  assert figures["below_cut_multiply_adds"] > figures["above_cut_multiply_adds"] > 0


def test_projection_of_ten_epochs_on_hand_made_timings():
  from tools import bench_train  # pylint: disable=g-import-not-at-top
  figures = bench_train.projection(
      {"plain": 100, "extraction": 200, "top": 10_000, "top_inference": 20_000},
      train=1000, validation=200, epochs=10)
  # plain: 10 x (1000/100 + 200/200) = 110 s;
  # cached: 1200/200 + 10 x (1000/10000 + 200/20000) = 7.1 s
  assert figures["plain_10_epochs_seconds"] == 110.0
  assert figures["cached_10_epochs_seconds"] == pytest.approx(7.1)
  assert figures["speedup"] == pytest.approx(110 / 7.1)


def test_multiply_adds_of_cnn2_are_counted_by_hand():
  from tools import bench_train  # pylint: disable=g-import-not-at-top
  from trainers.modeling import models  # pylint: disable=g-import-not-at-top
  # 100 px: 98x98 outputs of 3x3x3 -> 32, pooled to 49, 47x47 of 3x3x32 -> 64, pooled to
  # 23x23x64 = 33,856 inputs of Dense(128), then Dense(10).
  by_hand = 98 * 98 * 27 * 32 + 47 * 47 * 288 * 64 + 33_856 * 128 + 128 * 10
  assert bench_train.multiply_adds(models.build_model("cnn2", 100)) == by_hand == 53_348_992


def test_multiply_adds_count_depthwise_convolutions_and_nested_models():
  import keras  # pylint: disable=g-import-not-at-top
  from tools import bench_train  # pylint: disable=g-import-not-at-top
  inner = keras.Sequential([keras.Input((8, 8, 4)), keras.layers.DepthwiseConv2D(3, padding="same"),
                            keras.layers.Conv2D(6, 1)])
  outer = keras.Sequential([keras.Input((8, 8, 4)), inner, keras.layers.Flatten(),
                            keras.layers.Dense(2)])
  # 8x8 outputs of a 3x3 window on each of 4 channels; 8x8 of 1x1x4 -> 6; 384 -> 2.
  assert bench_train.multiply_adds(outer) == 8 * 8 * 9 * 4 + 8 * 8 * 4 * 6 + 384 * 2 == 4608


def test_the_cut_splits_the_multiply_adds_of_a_transfer_model():
  from tools import bench_train  # pylint: disable=g-import-not-at-top
  from trainers.modeling import cutting  # pylint: disable=g-import-not-at-top
  from trainers.modeling import models  # pylint: disable=g-import-not-at-top
  model = models.build_model("mnv2_035", 32, weights=None)
  bottom, top = cutting.split_at_cut(model, 30)
  assert (bench_train.multiply_adds(bottom) + bench_train.multiply_adds(top)
          == bench_train.multiply_adds(model))
  assert bench_train.multiply_adds(top) > 0


@pytest.mark.slow  # four TFLite conversions of a small cnn2: about a minute
def test_bench_export_writes_its_rows_and_the_machine(run_dir, tmp_path):
  out = tmp_path / "export.json"
  result = _run("tools.bench_export", f"--model_dir={run_dir}", "--calibration_images=8",
                "--runs=2", f"--json={out}")
  written = json.loads(out.read_text())
  assert [row["format"] for row in written["rows"]] == [
      "Keras (model.keras)", "TFLite float32", "TFLite float16", "TFLite dynamic",
      "TFLite int8"]
  assert all(row["latency_ms"]["1_thread"] > 0 for row in written["rows"])
  assert written["machine"]["precision"] == "float32" and written["machine"]["cores"] >= 1
  assert "machine: " in result.stdout


@pytest.mark.parametrize("tool, flags", [
    ("tools.bench_input", ["--manual_dir=M", "--data_dir=D"]),
    ("tools.bench_train", ["--data_dir=D"]),
    ("tools.bench_export", ["--model_dir=R"])])
def test_a_json_that_is_not_ours_is_refused_and_kept(tmp_path, tool, flags):
  mine = tmp_path / "notes.json"
  mine.write_text('{"mine": 1}')
  result = subprocess.run([sys.executable, "-m", tool, *flags, f"--json={mine}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1 and "is not a figures file of ours" in result.stderr
  assert "Traceback" not in result.stderr and mine.read_text() == '{"mine": 1}'


@pytest.mark.parametrize("flag, says", [("--passes=0", "--passes takes 1 or more"),
                                        ("--threads=0", "--threads takes thread counts")])
def test_bench_input_refuses_a_wrong_count_in_one_line(flag, says):
  result = subprocess.run([sys.executable, "-m", "tools.bench_input", "--manual_dir=M",
                           "--data_dir=D", flag], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 1 and says in result.stderr and "Traceback" not in result.stderr
