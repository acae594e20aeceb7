"""tools.report: one self-contained HTML page of a study, and that page in a real browser."""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from tools import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def study(run_dir, tmp_path_factory):
  """A study folder as tools.reproduce lays it out: two experiments, one seed each."""
  root = tmp_path_factory.mktemp("study")
  for experiment in ("model_01", "model_02"):
    shutil.copytree(run_dir, root / experiment / "seed_0")
  return root


@pytest.fixture(scope="module")
def page(study):
  out = study / "report.html"
  result = subprocess.run([sys.executable, "-m", "tools.report", f"--runs={study}",
                           f"--out={out}"], cwd=REPO, capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"report: {out}" in result.stdout
  return out


def test_the_page_is_self_contained(page):
  text = page.read_text()
  assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)
  assert "<script" not in text and "<link" not in text and "url(" not in text
  sources = re.findall(r'<img [^>]*src="([^"]+)"', text)
  assert sources and all(source.startswith("data:image/") for source in sources)
  assert page.stat().st_size < 10_000_000


def test_the_comparison_has_a_row_per_experiment_and_names_the_rows_not_run(page):
  text = page.read_text()
  comparison = text[text.index("<h2>The comparison</h2>"):]
  comparison = comparison[:comparison.index("</table>")]
  rows = re.findall(r"<tr(?: class=\"(\w+)\")?><td>([^<]+)</td>", comparison)
  assert [name for css, name in rows if not css] == ["model_01", "model_02"]
  not_run = [name for css, name in rows if css == "notrun"]
  assert not_run == ["model_03", "model_04", "mnv2", "mnv2_fine_tune", "enb3", "dn121"]
  assert "best" in comparison and "p = " in comparison


def test_each_experiment_has_its_section_with_curves_and_figures(page):
  text = page.read_text()
  for experiment in ("model_01", "model_02"):
    section = text[text.index(f'<h2 id="{experiment}">'):]
    section = section[:section.index("<h2", 5)]
    assert "--model=cnn2" in section
    assert len(re.findall("<img ", section)) == 4  # curves, confusion, per-class, errors


def test_a_folder_without_runs_is_one_line(tmp_path):
  with pytest.raises(ValueError, match="holds no finished run"):
    report.build(str(tmp_path))


@pytest.mark.slow  # a headless browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine: apt-get install "
                    "chromium (.ci/run installs it)")
def test_the_page_renders_in_a_real_browser(page, tmp_path):
  sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a test extra")
  errors = []
  with sync_api.sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    view = browser.new_page()
    view.on("console", lambda message: message.type == "error" and errors.append(message.text))
    view.on("pageerror", lambda error: errors.append(str(error)))
    started = time.perf_counter()
    view.goto(page.as_uri(), wait_until="load")
    seconds = time.perf_counter() - started
    widths = view.eval_on_selector_all("img", "images => images.map(i => i.naturalWidth)")
    rows = view.eval_on_selector_all(
        "h2 + table tr td:first-child", "cells => cells.map(c => c.textContent)")
    shot = tmp_path / "report.png"
    view.screenshot(path=str(shot), full_page=True)
    browser.close()
  assert errors == []
  assert widths and all(width > 0 for width in widths), widths
  assert {"model_01", "model_02"} <= set(rows)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
  assert pixels.shape[0] > 1000 and pixels.std() > 10  # tall, and not one colour
  assert seconds < 2, seconds


def test_an_out_that_is_not_a_report_of_ours_is_left_as_it_is(study, tmp_path):
  out = tmp_path / "notes.html"
  out.write_text("<p>mine</p>")
  with pytest.raises(ValueError, match="is not a report of tools.report: it is left"):
    report.write(str(study), str(out))
  assert out.read_text() == "<p>mine</p>"
  with pytest.raises(ValueError, match="--eda=.* is not a folder"):
    report.write(str(study), str(tmp_path / "new.html"), eda_dir=str(tmp_path / "missing"))


def test_a_report_of_ours_is_replaced(study, page):
  before = page.read_text()
  assert report.MARKER in before
  assert report.write(str(study), str(page)) > 0 and report.MARKER in page.read_text()
