"""`tfds build` end to end on a generated sample, read back three ways."""

import json
import subprocess
import sys

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds


def test_every_config_builds_with_identical_splits(data_dir):
  metadata = {}
  for config in ("full", "160px"):
    folder = data_dir / "animals10_tfds" / config / "1.0.0"
    metadata[config] = json.loads((folder / "metadata.json").read_text())
  assert metadata["full"]["split_counts"] == metadata["160px"]["split_counts"]
  counts = metadata["full"]["split_counts"]
  assert sum(sum(per_class.values()) for per_class in counts.values()) == 400
  assert metadata["full"]["skipped"] == []


def test_records_decode_and_carry_metadata(data_dir):
  builder = tfds.builder("animals10_tfds/160px", data_dir=str(data_dir))
  dataset = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
  names = set()
  for record in dataset.take(50):
    image = tf.io.decode_jpeg(record["image"], channels=3)
    assert min(image.shape[:2]) <= 160
    name = record["file_name"].numpy().decode()
    assert name.split("/")[0] in ("cane", "cavallo", "elefante", "farfalla", "gallina",
                                  "gatto", "mucca", "pecora", "ragno", "scoiattolo")
    assert len(record["sha256"].numpy()) == 64
    assert record["orientation"].numpy().decode() in ("landscape", "portrait", "squared")
    names.add(name)
  assert len(names) == 50


@pytest.mark.slow  # 20-40 s of training or fresh processes (CI runs it)
def test_load_in_a_fresh_process_and_without_our_code(data_dir):
  script = (
      "import sys, tensorflow_datasets as tfds\n"
      "import animals10_tfds\n"
      f"ds = tfds.load('animals10_tfds/160px', split='test', data_dir={str(data_dir)!r})\n"
      "print(sum(1 for _ in ds))\n")
  loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
  from_directory = subprocess.run(
      [sys.executable, "-c",
       "import sys, tensorflow_datasets as tfds\n"
       f"b = tfds.builder_from_directory({str(data_dir / 'animals10_tfds/full/1.0.0')!r})\n"
       "assert 'animals10_tfds' not in sys.modules\n"
       "print(sum(1 for _ in b.as_dataset(split='test')))\n"],
      capture_output=True, text=True, check=True)
  assert int(loaded.stdout.split()[-1]) == int(from_directory.stdout.split()[-1]) > 0
