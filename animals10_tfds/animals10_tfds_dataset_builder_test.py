"""The TFDS test of the builder, over dummy_data/: 33 files, of which 31 good
images (a CMYK JPEG among them), a truncated JPEG and a .DS_Store."""

import tensorflow_datasets as tfds

from animals10_tfds import animals10_tfds_dataset_builder


class Animals10FullTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = animals10_tfds_dataset_builder.Builder
  BUILDER_CONFIG_NAMES_TO_TEST = ["full", "160px"]
  # The 31 good images (the truncated one is skipped), split by group hash.
  SPLITS = {"train": 23, "validation": 2, "test": 6}
  SKIP_CHECKSUMS = True

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.EXAMPLE_DIR = tfds.core.Path(__file__).parent / "dummy_data"

  def test_metadata_reports_the_skipped_file(self):
    builder = self.builder
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=self.EXAMPLE_DIR))
    skipped = builder.info.metadata["skipped"]
    self.assertEqual([item["path"] for item in skipped], ["cane/truncated.jpg"])
    self.assertEqual(skipped[0]["reason"], "truncated image")


if __name__ == "__main__":
  tfds.testing.test_main()
