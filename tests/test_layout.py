"""The shape of the house: stages import only downwards, and only through their faces."""

import ast
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Lowest first: a stage imports only the stages before it.
STAGES = ("runs", "data", "modeling", "evaluation", "training", "serving")
# Top-level modules every stage may use: they import no stage.
LEAVES = ("config", "cli")


def _imports(path: pathlib.Path) -> list[tuple[str, str]]:
  """(stage or top-level module, name) of every `from trainers... import name` in a file."""
  found = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and (
        node.module == "trainers" or node.module.startswith("trainers.")):
      parts = node.module.split(".")
      for alias in node.names:
        found.append((parts[1], alias.name) if len(parts) > 1 else (alias.name, ""))
    elif isinstance(node, ast.Import):
      assert not any(alias.name.startswith("trainers") for alias in node.names), (
          f"{path}: import trainers modules as `from trainers.STAGE import module`")
  return found


def _sources(folder: str):
  return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_only_the_stages_below_it_and_the_leaves(stage):
  allowed = set(STAGES[:STAGES.index(stage) + 1]) | set(LEAVES)
  for path in _sources(f"trainers/{stage}"):
    for imported, _ in _imports(path):
      assert imported in allowed, f"{path.relative_to(ROOT)} imports trainers.{imported}"


def test_the_leaves_import_no_stage():
  for leaf in LEAVES:
    assert _imports(ROOT / "trainers" / f"{leaf}.py") == []


@pytest.mark.parametrize("folder", ["trainers", "tools"])
def test_code_outside_a_stage_imports_only_what_its_face_names(folder):
  checked = 0
  for path in _sources(folder):
    relative = path.relative_to(ROOT).parts
    own = relative[1] if folder == "trainers" and len(relative) > 2 else None
    for stage, name in _imports(path):
      if stage in STAGES and stage != own and name:
        face = importlib.import_module(f"trainers.{stage}").__all__
        assert name in face, (f"{path.relative_to(ROOT)} imports trainers.{stage}.{name}, "
                              f"which is not in that stage's face ({', '.join(face)})")
        checked += 1
  assert checked > 10


@pytest.mark.parametrize("stage", STAGES)
def test_every_module_a_face_names_exists(stage):
  for name in importlib.import_module(f"trainers.{stage}").__all__:
    assert (ROOT / "trainers" / stage / f"{name}.py").exists(), f"trainers.{stage}.{name}"
