#!/usr/bin/env bash
# Serve the NLU with Rasa: one `rasa run --enable-api` per language, on 127.0.0.1 only.
#
#   AFTERCARE_RASA_TOKEN=$(openssl rand -hex 16) make rasa-serve
#
# nl listens on ${AFTERCARE_RASA_PORT_NL:-5005}, en on ${AFTERCARE_RASA_PORT_EN:-5006}; point the
# bot at them with AFTERCARE_RASA_URL="nl=http://127.0.0.1:5005,en=http://127.0.0.1:5006" and
# the same AFTERCARE_RASA_TOKEN. Models are trained first when nlu/data changed (cached by hash in
# config.yml's nlu.cache_dir, or $AFTERCARE_NLU_CACHE_DIR). Ctrl-C stops both servers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

if [[ -z "${AFTERCARE_RASA_TOKEN:-}" ]]; then
    echo "make rasa-serve: set AFTERCARE_RASA_TOKEN (a long random string); the server refuses" >&2
    echo "requests without it, and the bot sends it." >&2
    exit 2
fi
bash nlu/rasa/make_env.sh
VENV="${AFTERCARE_RASA_VENV:-$HOME/.cache/aftercare/rasa-3.6.21}"
PY="${AFTERCARE_PY:-.venv/bin/python}"
# The same model cache as `aftercare nlu train --backend rasa`: config.yml's nlu.cache_dir.
CACHE="${AFTERCARE_NLU_CACHE_DIR:-$("$PY" -c 'from care.settings import load_settings, resolve_path
s = load_settings()
print(resolve_path(s, s.nlu.cache_dir))')}"
export RASA_TELEMETRY_ENABLED=false TF_CPP_MIN_LOG_LEVEL=3 SQLALCHEMY_SILENCE_UBER_WARNING=1

model_for() {
    "$PY" - "$1" "$CACHE" <<'PY'
import sys
from pathlib import Path

from nlu.rasa_env import model_path, train_model

lang, cache = sys.argv[1], Path(sys.argv[2])
if not model_path(lang, cache).is_file():
    print(f"Training the Rasa model for '{lang}' (15 s or so)...", file=sys.stderr)
print(train_model(lang, cache))
PY
}

declare -A PORTS=([nl]="${AFTERCARE_RASA_PORT_NL:-5005}" [en]="${AFTERCARE_RASA_PORT_EN:-5006}")
PIDS=()
DIRS=()
stop_all() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait || true
    for dir in "${DIRS[@]}"; do rm -rf "$dir"; done
}
trap stop_all INT TERM EXIT

for lang in nl en; do
    model="$(model_for "$lang")"
    echo "Starting Rasa for '$lang' on http://127.0.0.1:${PORTS[$lang]} with $model"
    workdir="$(mktemp -d)"
    DIRS+=("$workdir")
    # --option=value: a token that begins with "-" would otherwise read as an option.
    (cd "$workdir" && exec "$VENV/bin/rasa" run --enable-api --auth-token="$AFTERCARE_RASA_TOKEN" \
        --model="$model" --interface=127.0.0.1 --port="${PORTS[$lang]}") &
    PIDS+=("$!")
done
echo "Rasa servers are starting (a minute or so); Ctrl-C stops them."
wait -n "${PIDS[@]}"
