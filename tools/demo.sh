#!/usr/bin/env bash
# The demo: generate a realistic Animals-10 sample, build it into TFRecords with
# `tfds build`, train the study's base CNN on it and print its metrics row.
# Everything goes to ./work (override with WORK=DIR).
source "$(dirname "$0")/_venv.sh"
work="${WORK:-$repo/work}"
if [ ! -d "$work/manual/raw-img" ]; then
  python -m tools.make_sample --out="$work/manual" --images_per_class="${IMAGES_PER_CLASS:-300}"
fi
tfds build animals10_tfds --manual_dir="$work/manual" --data_dir="$work/tensorflow_datasets"
python -m trainers.main --model=cnn2 --data_dir="$work/tensorflow_datasets" \
  --model_dir="$work/runs/cnn2_demo" --epochs="${EPOCHS:-10}" --batch_size=32
# The study's comparison as a smoke run: its base CNN and MobileNetV2 (no pretrained
# weights offline), two seeds each, a few steps: the table, McNemar p-values, charts.
python -m tools.reproduce --quick --experiments=model_01,mnv2 --seeds=0,1 --weights=none \
  --data_dir="$work/tensorflow_datasets" --out="$work/runs/reproduce"
