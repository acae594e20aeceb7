"""The study's experiments as flagfiles (`<name>.flags`), package data of `trainers`.

A package (not a bare folder) so that setuptools installs it with its flagfiles
and `tools.reproduce` finds them in a plain, non-editable install too.
"""

import os

FOLDER = os.path.dirname(os.path.abspath(__file__))


def path(experiment: str) -> str:
  """The flagfile of an experiment."""
  return os.path.join(FOLDER, experiment + ".flags")


def values(experiment: str) -> dict:
  """{flag name: value} of an experiment's flagfile (`--name=value` lines)."""
  with open(path(experiment)) as file:
    return dict(line.strip()[2:].split("=", 1) for line in file
                if line.startswith("--") and "=" in line)
