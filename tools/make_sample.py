r"""Generates a realistic, offline stand-in for Kaggle's Animals-10.

    python -m tools.make_sample --out=DIR [--images_per_class=N | --full_scale]

writes DIR/raw-img/<italian class>/<file> with the real data set's folder names,
file-name styles, resolution mix (300x225 the most common, ~80 % landscape, many
rare sizes), JPEG sizes, and about 0.2 % non-RGB or non-JPEG files. Content is
drawn per class (see `tools.sample_art`): learnable, but with clutter, colour
morphs, decoy animals and noise, so it is not solved in one epoch.
Deterministic for a seed, whatever the number of worker processes.
"""

import dataclasses
import io
import multiprocessing
import os
import string
import sys

from absl import app
from absl import flags
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from animals10_tfds import source
from tools import sample_art

# Real per-class counts of Animals-10 (26,179 images).
FULL_SCALE_COUNTS = {
    "cane": 4863, "ragno": 4821, "gallina": 3098, "cavallo": 2623,
    "farfalla": 2112, "mucca": 1866, "scoiattolo": 1862, "pecora": 1820,
    "gatto": 1668, "elefante": 1446,
}

# The 16 resolutions that each hold >= 1 % of the real set, with their shares;
# the rest (27.5 %) is drawn from a long tail of rare sizes.
COMMON_RESOLUTIONS = (
    ((300, 225), .17), ((300, 200), .10), ((640, 480), .06), ((300, 300), .05),
    ((640, 427), .05), ((300, 169), .04), ((640, 426), .04), ((300, 199), .03),
    ((300, 400), .03), ((225, 300), .03), ((640, 360), .03), ((300, 201), .02),
    ((300, 240), .02), ((300, 168), .02), ((640, 640), .02), ((640, 423), .015),
)

# Share of files that are not RGB JPEG (real: 51 of 26,179), and their kinds.
ODD_SHARE = 51 / 26179
ODD_KINDS = ("png_rgb", "png_rgba", "jpeg_gray", "jpeg_cmyk", "png_palette")

_FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ImageTask:
  folder: str
  label: int
  index: int
  seed: int
  odd_kind: str = ""


def _resolution(rng) -> tuple[int, int]:
  draw = rng.random()
  for size, share in COMMON_RESOLUTIONS:
    if draw < share:
      return size
    draw -= share
  width = int(rng.choice([300, 640, rng.integers(150, 1025)], p=[.6, .3, .1]))
  shape = rng.random()
  if shape < .75:  # landscape
    height = int(width * rng.uniform(.5, .95))
  elif shape < .95:  # portrait
    height = int(width * rng.uniform(1.05, 1.6))
  else:
    height = width
  return width, max(height, 32)


def _file_name(rng, width, odd_kind) -> str:
  extension = ".png" if odd_kind.startswith("png") else None
  if width == 640:
    stem = "".join(rng.choice(list("0123456789abcdef"), 56)) + "_640"
    return stem + (extension or ".jpg")
  alphabet = list(string.ascii_letters + string.digits + "-_")
  return "OIP-" + "".join(rng.choice(alphabet, 27)) + (extension or ".jpeg")


def render(task: ImageTask) -> tuple[str, bytes]:
  """Draws one image; returns (relative path, encoded bytes)."""
  rng = np.random.default_rng([task.seed, task.label, task.index])
  width, height = _resolution(rng)
  # Smooth blotchy background: a few random colours, upsampled.
  grid = rng.integers(0, 256, (rng.integers(2, 6), rng.integers(2, 6), 3))
  grid = (grid * rng.uniform(.4, 1.0) + rng.uniform(0, 120)).clip(0, 255)
  canvas = Image.fromarray(grid.astype(np.uint8)).resize(
      (width, height), Image.Resampling.BILINEAR)
  draw = ImageDraw.Draw(canvas)
  short = min(width, height)
  for _ in range(rng.integers(3, 12)):  # clutter: grass, branches, blobs
    x, y = rng.integers(0, width), rng.integers(0, height)
    extent = rng.integers(short // 20, short // 4)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    if rng.random() < .5:
      draw.line([(x, y), (x + rng.integers(-extent, extent),
                          y + rng.integers(-extent, extent))],
                fill=colour, width=int(rng.integers(1, 6)))
    else:
      draw.ellipse([x, y, x + extent, y + extent * rng.uniform(.3, 1)],
                   fill=colour)
  if rng.random() < .3:  # a small decoy animal of another class
    decoy = (task.label + rng.integers(1, 10)) % 10
    sample_art.draw_animal(canvas, decoy, rng,
                           (rng.uniform(.1, .9) * width, rng.uniform(.1, .9) * height),
                           short * rng.uniform(.06, .12))
  size = short * rng.uniform(.22, .45)
  center = (width * rng.uniform(.3, .7), height * rng.uniform(.35, .65))
  sample_art.draw_animal(canvas, task.label, rng, center, size)
  if rng.random() < .5:
    canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(.3, 1.2)))
  pixels = np.asarray(canvas, dtype=np.int16)
  noise = rng.integers(-18, 19, (height, width, 1), dtype=np.int16)
  canvas = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
  name = _file_name(rng, width, task.odd_kind)
  return f"{task.folder}/{name}", _encode(canvas, task.odd_kind, rng)


def _encode(image, odd_kind, rng) -> bytes:
  buffer = io.BytesIO()
  if odd_kind == "png_rgb":
    image.save(buffer, format="PNG")
  elif odd_kind == "png_rgba":
    alpha = Image.new("L", image.size, 255)
    ImageDraw.Draw(alpha).rectangle([0, 0, image.size[0] // 6, image.size[1]], fill=0)
    image.putalpha(alpha)
    image.save(buffer, format="PNG")
  elif odd_kind == "png_palette":
    image.convert("P", palette=Image.Palette.ADAPTIVE).save(buffer, format="PNG")
  elif odd_kind == "jpeg_gray":
    image.convert("L").save(buffer, format="JPEG", quality=85)
  elif odd_kind == "jpeg_cmyk":
    image.convert("CMYK").save(buffer, format="JPEG", quality=85)
  else:
    image.save(buffer, format="JPEG", quality=int(rng.integers(70, 92)))
  return buffer.getvalue()


def plan(counts: dict[str, int], seed: int) -> list[ImageTask]:
  """The images to draw: per class, with a fixed share of odd formats."""
  tasks = [ImageTask(folder, source.FOLDERS.index(folder), index, seed)
           for folder in source.FOLDERS for index in range(counts[folder])]
  rng = np.random.default_rng(seed)
  odd_count = max(1, round(len(tasks) * ODD_SHARE)) if len(tasks) >= 50 else 0
  for position, chosen in enumerate(rng.choice(len(tasks), odd_count, replace=False)):
    tasks[chosen] = dataclasses.replace(
        tasks[chosen], odd_kind=ODD_KINDS[position % len(ODD_KINDS)])
  return tasks


def _render_and_write(args):
  task, out = args
  path, data = render(task)
  with open(os.path.join(out, path), "wb") as file:
    file.write(data)
  return len(data)


def make_sample(out: str, counts: dict[str, int], seed: int = 0,
                workers: int = 0) -> int:
  """Writes the sample under `out/raw-img`.

  Args:
    out: output folder.
    counts: images per Italian class folder.
    seed: seed; the same seed gives the same bytes.
    workers: processes (0: one per core).

  Returns:
    The number of images written.
  """
  raw = os.path.join(out, source.RAW_DIR_NAME)
  for folder in source.FOLDERS:
    os.makedirs(os.path.join(raw, folder), exist_ok=True)
  tasks = [(task, raw) for task in plan(counts, seed)]
  workers = workers or os.cpu_count() or 1
  if workers == 1 or len(tasks) < 200:
    sizes = [_render_and_write(task) for task in tasks]
  else:
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
      sizes = list(pool.imap_unordered(_render_and_write, tasks, chunksize=16))
  return len(sizes)


def counts_for(images_per_class: int, full_scale: bool) -> dict[str, int]:
  if full_scale:
    return dict(FULL_SCALE_COUNTS)
  if images_per_class < 1:
    raise ValueError("--images_per_class must be at least 1.")
  return dict.fromkeys(source.FOLDERS, images_per_class)


def _define_flags():
  flags.DEFINE_string("out", None, "Folder to write raw-img/ into.", required=True)
  flags.DEFINE_integer("images_per_class", 100, "Images in every class folder.")
  flags.DEFINE_bool("full_scale", False, "Real per-class counts (26,179 images).")
  flags.DEFINE_integer("seed", 0, "Seed; the same seed gives the same files.")
  flags.DEFINE_integer("workers", 0, "Processes; 0 uses every core.")


def main(argv):
  del argv
  try:
    counts = counts_for(_FLAGS.images_per_class, _FLAGS.full_scale)
  except ValueError as error:
    sys.exit(f"make_sample: {error}")
  total = make_sample(_FLAGS.out, counts, _FLAGS.seed, _FLAGS.workers)
  print(f"Wrote {total} images to {os.path.join(_FLAGS.out, source.RAW_DIR_NAME)}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
