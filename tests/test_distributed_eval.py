"""Evaluation under MirroredStrategy is exact and never crashes on a partial batch.

The sample's validation split has 29 images and its test split 85. On 2
replicas, batch 12 leaves a last validation batch of 5 (split 3/2) and a last
test batch of 1 (one replica with no image); batch 70 makes the first
validation batch 29 images (15/14); on 3 replicas, batch 12 leaves 5 (2/2/1).
Each case trains in a child process, because the CPU can only be split into
virtual devices before TensorFlow starts.
"""

import csv
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainers.data import input_pipeline
from trainers.data import dataset as dataset_lib
from trainers.data import records as records_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Several transfer models built and traced: minutes on 2 cores (CI runs them).
pytestmark = pytest.mark.slow
CASES = {  # name: (model, replicas, batch size)
    **{model: (model, 2, 12) for model in ("cnn2", "cnn4", "mnv2", "mnv2_035", "enb3",
                                           "dn121")},
    "cnn2_first_batch_uneven": ("cnn2", 2, 70),
    "cnn2_three_replicas": ("cnn2", 3, 12),
}


def _child(code: str, timeout=600):
  result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
  """Every case trained for one step under MirroredStrategy: {case: run folder}."""
  root = tmp_path_factory.mktemp("mirrored")
  for replicas in sorted({replicas for _, replicas, _ in CASES.values()}):
    cases = {name: case for name, case in CASES.items() if case[1] == replicas}
    _child(f"""
        from trainers import config
        from trainers.training import train
        for name, (model, replicas, batch) in {cases!r}.items():
          # mnv2 trains a whole epoch (its head on cached features), then fine-tunes
          # one step, with class weights
          mnv2 = dict(steps_per_epoch=0, fine_tune=True, fine_tune_epochs=1,
                      fine_tune_layers=10, balance="class_weight")
          train.train_and_evaluate(config.Config(**{{
              **dict(model=model, model_dir={str(root)!r} + "/" + name,
                     data_dir={str(data_dir)!r}, image_size=32 if model != "cnn4" else 48,
                     batch_size=batch, epochs=1, steps_per_epoch=1, weights="none",
                     strategy="mirrored", virtual_devices=replicas, deterministic=True),
              **(mnv2 if name == "mnv2" else {{}})}}))
        """)
  return {name: root / name for name in CASES}


@pytest.mark.parametrize("case", sorted(CASES))
def test_mirrored_run_validates_and_counts_every_test_image_once(runs, data_dir, case):
  run = runs[case]
  metrics = json.loads((run / "metrics.json").read_text())
  builder = dataset_lib.builder("animals10_tfds/160px", str(data_dir))
  assert metrics["test_images"] == builder.info.splits["test"].num_examples == 85
  with open(run / "predictions.csv", newline="") as file:
    rows = list(csv.DictReader(file))
  assert len(rows) == 85 and len({row["file_name"] for row in rows}) == 85
  history = list(csv.DictReader(open(run / "history.csv", newline="")))
  assert all(np.isfinite(float(row["val_loss"])) for row in history)
  assert [row["phase"] for row in history] == ["train"] + ["fine_tune"] * (case == "mnv2")
  assert metrics["phases"]["train"]["cached_features"] == (case == "mnv2")


@pytest.mark.parametrize("case", ["cnn2", "mnv2", "cnn2_first_batch_uneven",
                                  "cnn2_three_replicas"])
def test_mirrored_metrics_equal_a_one_device_evaluation_of_the_saved_model(runs, data_dir,
                                                                            case):
  run = runs[case]
  model = keras.saving.load_model(run / "model.keras")
  builder = dataset_lib.builder("animals10_tfds/160px", str(data_dir))
  size = 32 if CASES[case][0] != "cnn4" else 48
  expected = {}
  for split in ("validation", "test"):
    records = records_lib.records(builder, split)
    labels, names = records_lib.labels_and_names(records)
    batches = input_pipeline.images(records, size, "crop").batch(7).map(
        lambda image, label: (keras.ops.cast(image, "float32"), label)).apply(
            tf.data.experimental.assert_cardinality(-(-len(labels) // 7)))  # no "ran out"
    probabilities = model.predict(batches, verbose=0)
    loss = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
    expected[split] = (names, probabilities.argmax(1), labels, float(np.mean(loss)))
  names, predictions, labels, _ = expected["test"]
  with open(run / "predictions.csv", newline="") as file:
    rows = list(csv.DictReader(file))
  classes = builder.info.features["label"].names
  assert [row["file_name"] for row in rows] == names
  assert [row["prediction"] for row in rows] == [classes[index] for index in predictions]
  metrics = json.loads((run / "metrics.json").read_text())
  assert metrics["accuracy_test"] == pytest.approx(np.mean(predictions == labels), abs=1e-9)
  _, predictions, labels, loss = expected["validation"]
  last = list(csv.DictReader(open(run / "history.csv", newline="")))[-1]
  assert float(last["val_accuracy"]) == pytest.approx(np.mean(predictions == labels), abs=1e-6)
  assert float(last["val_loss"]) == pytest.approx(loss, rel=2e-3)


def test_keras_builds_from_one_replica_batch_not_a_cross_replica_mean():
  """Keras 3.15 averages the first batch across replicas to read its shapes
  (an AddN of the images), which fails when replicas hold 17 and 16 images;
  `keras_compat.fix_symbolic_build` builds from the first replica's batch."""
  output = _child("""
      import numpy as np, tensorflow as tf, keras
      from trainers.modeling import keras_compat
      from trainers.training import devices
      devices.split_cpu(2)
      keras_compat.fix_symbolic_build()
      strategy = devices.make_strategy("mirrored")
      with strategy.scope():
        inputs = keras.Input((8, 8, 3))
        outputs = keras.layers.Dense(10, activation="softmax")(
            keras.layers.GlobalAveragePooling2D()(inputs))
        model = keras.Model(inputs, outputs)
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
      images = np.random.default_rng(0).uniform(0, 1, (33, 8, 8, 3)).astype("float32")
      labels = np.arange(33) % 10
      loss, _ = model.evaluate(tf.data.Dataset.from_tensor_slices((images, labels)).batch(70),
                               verbose=0)
      print("loss", loss, float(np.mean(keras.losses.sparse_categorical_crossentropy(
          labels, model.predict(images, verbose=0)))))
      """)
  _, evaluated, expected = output.split()[-3:]
  assert float(evaluated) == pytest.approx(float(expected), rel=1e-5)
