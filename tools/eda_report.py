"""The EDA report: the study's tables as Markdown, and its plots as PNG."""

import os

import pandas as pd

from trainers.evaluation import figures

# The study's findings on the real download, to read ours against.
STUDY_FINDINGS = """\
The study's findings on the real download (26,179 images): dog 19 %, spider 18 %,
chicken 12 %, horse 10 %, butterfly 8 %, cow/squirrel/sheep 7 %, cat/elephant 6 %; no
exact duplicates; all but 51 RGB JPEG; 80 % landscape; 300x225 the most common
resolution (17 %); 45 % of resolutions under 1 % of images; 16 resolutions with >= 1 %."""

def _share(count, total):
  return f"{100 * count / max(total, 1):.1f} %"


def _table(frame: pd.DataFrame) -> str:
  header = "| " + " | ".join(str(column) for column in frame.columns) + " |"
  rule = "|" + "---|" * len(frame.columns)
  rows = ["| " + " | ".join(str(value) for value in row) + " |"
          for row in frame.itertuples(index=False)]
  return "\n".join([header, rule] + rows)


def resolution_stats(good: pd.DataFrame) -> dict:
  """Resolution counts and how many hold under / at least 1 % of images."""
  counts = good.groupby(["width", "height"]).size().sort_values(ascending=False)
  shares = counts / max(len(good), 1)
  return {"counts": counts, "shares": shares, "rare": int((shares < .01).sum()),
          "common": int((shares >= .01).sum())}


def markdown(table: pd.DataFrame, groups: list, seconds: float) -> str:
  """The report text for `table` (see tools.eda.COLUMNS)."""
  good = table[table.error == ""]
  broken = table[table.error != ""]
  total = len(good)
  lines = ["# Animals-10 EDA", "",
           f"{len(table)} files read in {seconds:.1f} s: {total} images, "
           f"{len(broken)} unreadable.", "", STUDY_FINDINGS, ""]

  labels = good.label.value_counts()
  lines += ["## Label distribution", "", "![labels](labels.png)", "",
            _table(pd.DataFrame({"label": labels.index, "count": labels.values,
                                 "proportion": (labels.values / max(total, 1)).round(2)})), ""]

  duplicated = good[good.duplicated("hash", keep=False)].sort_values(["hash", "path"])
  lines += ["## Duplicates", "",
            f"Exact (same SHA-256): {good.hash.duplicated().sum()} files are copies, in "
            f"{duplicated.hash.nunique()} sets.", ""]
  if len(duplicated):
    lines += [_table(duplicated[["hash", "path"]].head(50)), ""]
  lines += [f"Near-duplicate groups (pHash within 4 bits): {len(groups)}, holding "
            f"{sum(len(group) for group in groups)} images.", ""]
  lines += [f"- {', '.join(group)}" for group in groups[:30]] + [""]

  odd = good[(good["mode"] != "RGB") | (good["format"] != "JPEG")]
  lines += ["## Mode and format", "", "![mode and format](mode_format.png)", "",
            f"Not RGB JPEG: {len(odd)} of {total} ({_share(len(odd), total)}).", ""]
  if len(odd):
    lines += [_table(odd[["path", "mode", "format"]]), ""]
  palettes = good.palette.value_counts()
  lines += ["Palette: " + ", ".join(f"{name} {count}" for name, count in palettes.items()), ""]

  orientation = good.orientation.value_counts()
  lines += ["## Orientation", "", "![orientation](orientation.png)", "",
            ", ".join(f"{name} {_share(count, total)}" for name, count in orientation.items()),
            ""]

  stats = resolution_stats(good)
  top = stats["counts"].head(20)
  lines += ["## Resolutions", "", "![resolutions](resolutions.png)", "",
            f"{len(stats['counts'])} distinct resolutions: {stats['common']} hold >= 1 % of "
            f"images, {stats['rare']} ({_share(stats['rare'], len(stats['counts']))} of "
            "resolutions) hold under 1 %.", "",
            _table(pd.DataFrame({"resolution": [f"{w}x{h}" for w, h in top.index],
                                 "count": top.values,
                                 "share": [_share(count, total) for count in top.values]})),
            ""]
  lines += ["## Unreadable files", ""]
  if len(broken):
    lines += [_table(broken[["path", "error"]]), ""]
  else:
    lines += ["None.", ""]
  return "\n".join(lines)


def plots(good: pd.DataFrame, out: str):
  """Writes the PNG plots the report embeds."""
  pyplot = figures.pyplot()

  def save(figure, name):
    figure.tight_layout()
    figures.save(figure, os.path.join(out, name), dpi=90)

  figure, axes = pyplot.subplots(figsize=(7, 4))
  labels = good.label.value_counts()
  axes.bar(labels.index, labels.values, color="tab:blue")
  axes.set_ylabel("images")
  axes.set_title("Label distribution")
  axes.tick_params(axis="x", rotation=45)
  save(figure, "labels.png")

  figure, axes = pyplot.subplots(figsize=(6, 5))
  sizes = good.groupby(["width", "height"]).size().reset_index(name="count")
  axes.scatter(sizes.width, sizes.height, s=6 + 3000 * sizes["count"] / max(len(good), 1),
               alpha=.5)
  axes.set_xlabel("width (px)")
  axes.set_ylabel("height (px)")
  axes.set_title("Resolutions (area: share of images)")
  save(figure, "resolutions.png")

  figure, axes = pyplot.subplots(figsize=(5, 3.5))
  orientation = good.orientation.value_counts()
  axes.bar(orientation.index, orientation.values, color="tab:green")
  axes.set_title("Orientation")
  save(figure, "orientation.png")

  figure, axes = pyplot.subplots(figsize=(6, 3.5))
  kinds = (good["format"] + " " + good["mode"]).value_counts()
  axes.barh(kinds.index, kinds.values, color="tab:orange")
  axes.set_xscale("log")
  axes.set_title("Format and mode (log scale)")
  save(figure, "mode_format.png")
