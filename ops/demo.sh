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

step "A local stand-in of Zooniverse: the Panoptes sandbox (state in $ETCHACELL_DATA_DIR/sandbox)"
PORT=${SANDBOX_PORT:-8765}
"$BIN/etchacell" sandbox serve --port "$PORT" --state "$ETCHACELL_DATA_DIR/sandbox" > "$ETCHACELL_DATA_DIR/sandbox.log" 2>&1 &
SANDBOX_PID=$!
trap 'kill $SANDBOX_PID 2>/dev/null || true' EXIT
"$BIN/python" -c "
import sys, time, httpx
for _ in range(150):
    try:
        if httpx.get('http://127.0.0.1:$PORT/_sandbox/health', timeout=1).status_code == 200: sys.exit(0)
    except httpx.HTTPError: pass
    time.sleep(0.2)
sys.exit('the sandbox did not start; see $ETCHACELL_DATA_DIR/sandbox.log')"
IDS=$(etchacell sandbox seed --url "http://127.0.0.1:$PORT")
echo "seeded: $IDS"
field() { "$BIN/python" -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$IDS" "$1"; }
export ETCHACELL_PANOPTES__ENDPOINT="http://127.0.0.1:$PORT"
export ETCHACELL_PANOPTES__CLIENT_ID=sandbox ETCHACELL_PANOPTES__CLIENT_SECRET=sandbox-secret
export ETCHACELL_PANOPTES__PROJECT_ID=$(field project_id)
export ETCHACELL_PANOPTES__SEGMENTATION_WORKFLOW_ID=$(field segmentation_workflow_id)
export ETCHACELL_PANOPTES__CORRECTION_WORKFLOW_ID=$(field correction_workflow_id)

step "Sign in with client credentials and look at the project"
etchacell panoptes check
etchacell panoptes register

step "Volunteers classify (simulated through the sandbox), then the loop pulls: twice, the second finds nothing new"
"$BIN/python" - "$PORT" <<'PY'
import os, sys
import httpx
from panoptes_client import Panoptes
url = f"http://127.0.0.1:{sys.argv[1]}"
client = Panoptes(endpoint=url, client_id="sandbox", client_secret="sandbox-secret", username="", password="")
with client:
    project = os.environ["ETCHACELL_PANOPTES__PROJECT_ID"]
    subject = client.post("/subjects", json={"subjects": {"locations": ["image/jpeg"], "metadata": {}, "links": {"project": project}}})[0]
mark = {"frame": 2, "toolIndex": 0, "toolType": "freehandLine", "pathX": [100, 200, 150], "pathY": [100, 120, 200]}
made = httpx.post(f"{url}/_sandbox/classifications/bulk", timeout=60, json={
    "workflow_id": int(os.environ["ETCHACELL_PANOPTES__SEGMENTATION_WORKFLOW_ID"]),
    "subject_ids": [int(subject["subjects"][0]["id"])], "per_subject": 40,
    "annotations": [{"task": "T0", "taskType": "drawing", "value": [mark]}]}).json()
print(f"{made['created']} classifications posted")
PY
etchacell panoptes pull
etchacell panoptes pull
etchacell query cursor_lag

printf '\nDemo data lives in %s (remove it with `make clean-demo`).\n' "$ETCHACELL_DATA_DIR"
