"""The benchmarks run on a tiny sample and report every figure (no timing asserts).

Slow: each starts TensorFlow and traces models (about 40 s together); run with --slow.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, *args):
  result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_bench_input_reports_every_loader(sample_dir, data_dir, tmp_path):
  out = tmp_path / "input.json"
  _run("tools.bench_input", f"--manual_dir={sample_dir}", f"--data_dir={data_dir}",
       "--limit=128", "--batch_size=32", "--passes=1", f"--json={out}")
  figures = json.loads(out.read_text())
  for key in ("seed_loader", "directory_loader", "decode_ceiling/160px", "decode_ceiling/full",
              "pipeline/160px", "pipeline/full", "pipeline_cached/160px",
              "pipeline_cached/full"):
    assert figures[key] > 0, key
  assert set(figures["ratios"]) == {"pipeline/directory_loader", "pipeline/seed_loader",
                                    "pipeline/decode_ceiling", "pipeline_cached/directory_loader"}
  assert all(value > 0 for value in figures["ratios"].values())


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


def test_bench_train_compares_the_frozen_phase_plain_and_on_cached_features(data_dir, tmp_path):
  out = tmp_path / "transfer.json"
  _run("tools.bench_train", f"--data_dir={data_dir}", "--model=mnv2", "--steps=2",
       "--passes=1", "--image_size=32", "--batch_size=8", f"--json={out}")
  figures = json.loads(out.read_text())
  for key in ("plain_images_per_second", "extraction_images_per_second",
              "head_images_per_second"):
    assert figures[key] > 0, key
  assert figures["speedup"] == (figures["plain_10_epochs_seconds"]
                                / figures["cached_10_epochs_seconds"])
