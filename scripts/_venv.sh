# Sourced by scripts/run and scripts/test: create .venv and install floatkey into it.
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "floatkey needs Python 3.11 or newer as '$python' (set PYTHON=...)." >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    # Debian splits venv out of the interpreter package.
    echo "Installing python3-venv (needed to create .venv)..." >&2
    ${SUDO:-$( [ "$(id -u)" -eq 0 ] || echo sudo )} apt-get install -y -qq python3-venv >&2
    "$python" -m venv "$venv"
  fi
fi
stamp="$venv/.floatkey-installed"
want=$(cat "$root/pyproject.toml" | sha256sum | cut -c1-16)-${FLOATKEY_EXTRAS:-test}
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet -e "$root[${FLOATKEY_EXTRAS:-test}]" >&2
  echo "$want" > "$stamp"
fi
