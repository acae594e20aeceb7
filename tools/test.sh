#!/usr/bin/env bash
# Runs the whole test suite in the project's virtualenv (made if needed).
source "$(dirname "$0")/_venv.sh"
python -m pytest "$@"
