#!/usr/bin/env bash
# `make demo`: walk through what etchacell-loop can do so far, on a throw-away data directory.
set -euo pipefail
BIN=${ETCHACELL_BIN:-.venv/bin}
export ETCHACELL_DATA_DIR=${ETCHACELL_DATA_DIR:-demo-data}
export COLUMNS=${COLUMNS:-120}
etchacell() { "$BIN/etchacell" "$@"; }
step() { printf '\n\033[1;36m== %s\033[0m\n' "$*"; }

step "The effective configuration (defaults + etchacell.toml + ETCHACELL_* variables; secrets masked)"
ETCHACELL_PANOPTES__CLIENT_SECRET=demo-secret-never-shown etchacell config show

step "A bad value is one line naming the key"
ETCHACELL_IMAGING__JPEG_QUALITY=150 etchacell config check || true

step "Create the database schema (SQLite under $ETCHACELL_DATA_DIR; PostgreSQL via ETCHACELL_DATABASE_URL)"
etchacell db upgrade
etchacell db current

step "The named ops queries (ops/queries/*.sql)"
etchacell query --list

for name in $("$BIN/python" -c 'from etchacell_loop.db.queries import load_queries; print(" ".join(load_queries()))'); do
  step "etchacell query $name"
  etchacell query "$name"
done

step "The same SQL, ready to paste into Grafana"
etchacell query classification_throughput --sql grafana

printf '\nDemo data lives in %s (remove it with `make clean-demo`).\n' "$ETCHACELL_DATA_DIR"
