r"""What deploying a run costs: Keras against float32, float16, dynamic and int8 TFLite.

    python -m tools.bench_export --model_dir=work/runs/real_study/mnv2_035/seed_0 \
        [--calibration_images=200] [--runs=50] [--json=bench_export.json]

One process, side by side: each TFLite variant is exported with
`trainers.export` into a temporary folder (the guard is measured, not applied:
a variant past its default --max_accuracy_drop is still timed and marked), over
the run's whole test split. Latency is the median of --runs batch-1 calls, with
1 thread and with all threads; the Keras row is the run's model.keras, each
thread count in a fresh process. Prints a Markdown table.
"""

import os
import sys
import tempfile

from absl import app
from absl import flags

from trainers.runs import run_folder  # pylint: disable=g-import-not-at-top

_FLAGS = flags.FLAGS
VARIANTS = ("none", "float16", "dynamic", "int8")


def measure(model_dir: str, calibration_images: int, runs: int) -> list[dict]:
  """The table's rows: Keras first, then each TFLite variant."""
  from trainers.serving import export  # pylint: disable=g-import-not-at-top
  from trainers.runs import run_paths  # pylint: disable=g-import-not-at-top
  from trainers.serving import tflite_file  # pylint: disable=g-import-not-at-top
  rows = []
  with tempfile.TemporaryDirectory() as folder:
    for quantize in VARIANTS:
      report = export.export(model_dir, "tflite", os.path.join(folder, f"{quantize}.tflite"),
                             quantize=quantize, calibration_images=calibration_images,
                             max_accuracy_drop=1.0, tolerance=1.0, latency_runs=runs)
      if not rows:
        rows.append({"format": "Keras (model.keras)",
                     "bytes": os.path.getsize(run_paths.RunPaths(model_dir).model),
                     "accuracy_test": report["keras_accuracy_test"], "top1_agreement": 1.0,
                     "latency_ms": report["latency_ms"]["keras"], "within_guard": None})
      rows.append({"format": "TFLite float32" if quantize == "none" else f"TFLite {quantize}",
                   "bytes": report["bytes"], "accuracy_test": report["accuracy_test"],
                   "top1_agreement": report["top1_agreement"],
                   "latency_ms": report["latency_ms"]["exported"],
                   "within_guard": report["accuracy_drop"] <= tflite_file.MAX_ACCURACY_DROP[
                       quantize] + 1e-9,
                   "calibration_images": report["calibration_images"]})
  return rows


def table(rows: list[dict], threads: int) -> str:
  lines = [f"| format | bytes | accuracy_test | top-1 agreement | latency, 1 thread | "
           f"latency, all {threads} threads | within the default guard |",
           "|---|---|---|---|---|---|---|"]
  for row in rows:
    guard = {None: "", True: "yes", False: "**no**"}[row["within_guard"]]
    lines.append(f"| {row['format']} | {row['bytes']:,} | {row['accuracy_test']:.4f} | "
                 f"{row['top1_agreement']:.4f} | {row['latency_ms']['1_thread']:.2f} ms | "
                 f"{row['latency_ms']['all_threads']:.2f} ms | {guard} |")
  return "\n".join(lines)


def main(argv):
  from trainers import cli  # pylint: disable=g-import-not-at-top
  cli.no_arguments(argv)
  cli.quiet_logs()
  if _FLAGS.runs < 1:
    raise app.UsageError(f"--runs must be at least 1, got {_FLAGS.runs}.")
  from trainers.training import devices  # pylint: disable=g-import-not-at-top
  if _FLAGS.json and not run_folder.free_or_ours(_FLAGS.json, "machine"):
    sys.exit(f"bench_export: --json={_FLAGS.json} is not a figures file of ours (left as it "
             "is): choose another --json.")
  rows = measure(_FLAGS.model_dir, _FLAGS.calibration_images, _FLAGS.runs)
  # Exports start from a float32 copy of the run's model, whatever it trained in.
  machine = devices.machine("float32")
  print(f"\n{devices.machine_line(machine)}")
  print(f"{_FLAGS.model_dir}: int8 calibrated on {rows[-1]['calibration_images']} train "
        f"images; median of {_FLAGS.runs} calls")
  print(table(rows, os.cpu_count()))
  if _FLAGS.json:
    run_folder.write_json(_FLAGS.json, {"machine": machine, "rows": rows})


def _define_flags():
  flags.DEFINE_string("model_dir", None, "A finished run folder.", required=True)
  flags.DEFINE_integer("calibration_images", 200, "int8: calibration images (train split).")
  flags.DEFINE_integer("runs", 50, "Timed calls per latency figure.")
  flags.DEFINE_string("json", None, "Also write the rows here.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
