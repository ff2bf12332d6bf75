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

step "A synthetic SBF-SEM volume with known truth (OME-Zarr; docs/synthetic-data.md)"
VOLUME="$ETCHACELL_DATA_DIR/hela.zarr"
etchacell synth volume "$VOLUME" --shape 24,512,512 --cells 2 --seed 1 --overwrite

step "Subjects: every slice of every nucleus as a 5-frame flipbook (demo size: 512 px crops shown at 256 px)"
export ETCHACELL_IMAGING__CROP_SIZE_PX=512 ETCHACELL_IMAGING__SUBJECT_SIZE_PX=256
etchacell subjects prepare "$VOLUME" --all-rois --out "$ETCHACELL_DATA_DIR/subjects"
etchacell subjects prepare "$VOLUME" --all-rois --out "$ETCHACELL_DATA_DIR/subjects"   # again: nothing new to write

step "Upload them to the sandbox, idempotently (the second run finds every subject already there)"
etchacell subjects upload "$ETCHACELL_DATA_DIR/subjects" --subject-set "hela round 1"
etchacell subjects upload "$ETCHACELL_DATA_DIR/subjects" --subject-set "hela round 1"

step "Simulated volunteers trace the envelope through the sandbox, as the Zooniverse front ends would"
etchacell sandbox volunteers --url "http://127.0.0.1:$PORT" --workflow "$ETCHACELL_PANOPTES__SEGMENTATION_WORKFLOW_ID" \
  --truth "$VOLUME" --max-classifications 240 --seed 1

step "The loop pulls new classifications: twice, the second finds nothing new"
etchacell panoptes pull
etchacell panoptes pull
etchacell query cursor_lag

step "A classification export, as Project → Data exports gives it, aggregated with CRIA"
"$BIN/python" - "$PORT" "$ETCHACELL_DATA_DIR/export.csv" <<'PY'
import gzip, logging, os, sys, time
import httpx
from panoptes_client import Panoptes
url, out = f"http://127.0.0.1:{sys.argv[1]}", sys.argv[2]
logging.getLogger("httpx").setLevel(logging.WARNING)
client = Panoptes(endpoint=url, client_id="sandbox", client_secret="sandbox-secret", username="", password="")
project = os.environ["ETCHACELL_PANOPTES__PROJECT_ID"]
with client:
    client.post(f"/projects/{project}/classifications_export", json={"media": {"content_type": "text/csv"}})
    for _ in range(120):
        media = client.get(f"/projects/{project}/classifications_export")[0]["media"][0]
        if media.get("metadata", {}).get("state") == "ready":
            break
        time.sleep(0.5)
data = httpx.get(media["src"], timeout=60).content
with open(out, "wb") as handle:
    handle.write(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
print(f"export written to {out}")
PY
etchacell aggregate "$ETCHACELL_DATA_DIR/export.csv" --out "$ETCHACELL_DATA_DIR/consensus" \
  --workflow-id "$ETCHACELL_PANOPTES__SEGMENTATION_WORKFLOW_ID"
head -5 "$ETCHACELL_DATA_DIR/consensus/summary.csv"

printf '\nDemo data lives in %s (remove it with `make clean-demo`).\n' "$ETCHACELL_DATA_DIR"
