#!/usr/bin/env bash
# Create the Rasa 3.6.21 environment (Python 3.10) outside the checkout, so a fresh clone reuses it.
#
#   bash nlu/rasa/make_env.sh          # or: make rasa
#
# Where: ${AFTERCARE_RASA_VENV:-~/.cache/aftercare/rasa-3.6.21}. Which Python 3.10:
# ${AFTERCARE_PYTHON310}, else pyenv's 3.10.13 (or any 3.10), else python3.10 on PATH.
# Idempotent: a marker file is written only when the whole install succeeded.
set -euo pipefail

RASA_VERSION="3.6.21"
VENV="${AFTERCARE_RASA_VENV:-$HOME/.cache/aftercare/rasa-${RASA_VERSION}}"
MARKER="$VENV/.aftercare-rasa-complete"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ -f "$MARKER" && -x "$VENV/bin/rasa" ]]; then
    echo "Rasa ${RASA_VERSION} environment is ready: $VENV"
    exit 0
fi

find_python310() {
    local candidate prefix
    if [[ -n "${AFTERCARE_PYTHON310:-}" ]]; then
        echo "$AFTERCARE_PYTHON310"
        return 0
    fi
    if command -v pyenv >/dev/null 2>&1; then
        for version in 3.10.13 3.10; do
            if prefix="$(pyenv prefix "$version" 2>/dev/null)" && [[ -x "$prefix/bin/python3" ]]; then
                echo "$prefix/bin/python3"
                return 0
            fi
        done
    fi
    for candidate in python3.10 "$HOME/.pyenv/versions/3.10.13/bin/python3"; do
        if command -v "$candidate" >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

if ! PYTHON="$(find_python310)"; then
    cat >&2 <<MSG
make rasa: no Python 3.10 interpreter found.
Rasa ${RASA_VERSION} needs Python 3.8-3.10. Install one (for example 'pyenv install 3.10.13')
or point AFTERCARE_PYTHON310 at a python3.10 executable, then run 'make rasa' again.
MSG
    exit 2
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 10) else 1)'; then
    echo "make rasa: $PYTHON is not Python 3.10 ($("$PYTHON" --version 2>&1))." >&2
    exit 2
fi

echo "Creating the Rasa ${RASA_VERSION} environment in $VENV with $("$PYTHON" --version 2>&1)."
echo "The first time this downloads TensorFlow and takes several minutes."
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade "pip<24.1" "setuptools<70" wheel
"$VENV/bin/python" -m pip install --progress-bar off \
    -c "$HERE/constraints.txt" "rasa==${RASA_VERSION}"
"$VENV/bin/rasa" --version
date -u +%Y-%m-%dT%H:%M:%SZ > "$MARKER"
echo "Rasa ${RASA_VERSION} environment is ready: $VENV"
