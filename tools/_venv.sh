# Sourced by tools/demo.sh and tools/test.sh: makes .venv with the package
# installed (editable, with test extras) unless it is already there and current.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$repo/.venv}"
stamp="$venv/.animals10-installed"
if [ ! -x "$venv/bin/python" ]; then
  echo "Creating virtualenv $venv"
  python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$repo/setup.cfg" -nt "$stamp" ]; then
  echo "Installing animals10 and its dependencies into $venv (first run takes a few minutes)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$repo[test]"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
cd "$repo"
