"""Every command the README and docs/ show runs as written: its module exists and takes
each flag the page gives it; every link between the pages leads somewhere."""

import concurrent.futures
import functools
import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "WORKSPACE.md", *sorted((ROOT / "docs").glob("*.md"))]


def _code(text: str) -> list[str]:
  """The text of every fenced block (continued lines joined) and inline code span."""
  spans = []
  for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
    spans += block.replace("\\\n", " ").splitlines()
  outside = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
  spans += re.findall(r"`([^`\n]+)`", outside)
  return spans


def commands() -> list[tuple[str, str, tuple[str, ...]]]:
  """(page, module, flag names) of every `python -m MODULE ...` the pages show."""
  found = []
  for page in PAGES:
    for span in _code(page.read_text()):
      span = re.sub(r"\s#\s.*$", "", span)  # a shell comment
      for part in re.split(r"(?=python -m )", span):
        match = re.match(r"python -m ([\w.]+)(.*)", part)
        if not match:
          continue
        arguments = match.group(2).split(" -- ")[0]  # after "--": another command's flags
        names = tuple(re.findall(r"(?:^|[\s\[])--(\w+)", arguments))
        found.append((page.name, match.group(1), names))
  return found


@functools.lru_cache(maxsize=None)
def _flags_of(module: str) -> frozenset:
  """The flags `python -m MODULE --helpfull` lists."""
  result = subprocess.run([sys.executable, "-m", module, "--helpfull"], capture_output=True,
                          text=True, cwd=ROOT, check=False, timeout=300)
  return frozenset(re.findall(r"^\s+--(?:\[no\])?(\w+)", result.stdout, flags=re.M))


def test_the_pages_show_commands():
  modules = {module for _, module, _ in commands()}
  assert {"trainers.main", "trainers.predict", "trainers.export", "tools.reproduce"} <= modules


def test_every_command_names_a_module_that_exists():
  for page, module, _ in commands():
    assert importlib.util.find_spec(module) is not None, f"{page}: python -m {module}"


@pytest.mark.slow  # one process per command module: about a minute
def test_every_flag_a_page_gives_a_command_is_one_it_takes():
  shown = commands()
  modules = sorted({module for _, module, _ in shown})
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    known = dict(zip(modules, pool.map(_flags_of, modules)))
  for module in modules:
    assert "flagfile" in known[module], f"python -m {module} --helpfull lists no flags"
  wrong = [f"{page}: python -m {module} --{name}" for page, module, names in shown
           for name in names if name not in known[module]
           and not (name.startswith("no") and name[2:] in known[module])]
  assert not wrong, "flags the command does not take:\n" + "\n".join(wrong)


def test_every_relative_link_leads_to_a_file():
  broken = []
  for page in PAGES:
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
      if re.match(r"[a-z]+:", target) or target.startswith("#"):
        continue
      if not (page.parent / target.split("#")[0]).exists():
        broken.append(f"{page.relative_to(ROOT)} -> {target}")
  assert not broken, broken


def test_every_script_a_page_runs_exists():
  for page in PAGES:
    for script in re.findall(r"bash (\S+\.sh)", page.read_text()):
      assert (ROOT / script).exists(), f"{page.name}: bash {script}"
