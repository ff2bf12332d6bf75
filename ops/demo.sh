#!/usr/bin/env bash
# `make demo`: the whole system on one machine, on a throw-away data directory: a synthetic volume,
# its subjects on a local Panoptes sandbox, simulated volunteers, the daemon and a CPU worker running
# two rounds of the loop (consensus, retirement, training, predictions corrected by volunteers), a report.
set -euo pipefail
BIN=${ETCHACELL_BIN:-.venv/bin}
export ETCHACELL_DATA_DIR=${ETCHACELL_DATA_DIR:-demo-data}
export COLUMNS=${COLUMNS:-120}
etchacell() { "$BIN/etchacell" "$@"; }
step() { printf '\n\033[1;36m== %s\033[0m\n' "$*"; }
STARTED=$(date +%s)
# The servers started in the background are stopped however the demo ends (done, failed, Ctrl-C), and
# waited for, so that no process is left behind and the next demo can bind the same ports. They are
# started with "$BIN/etchacell" itself, never the function above: `$!` of a backgrounded function is
# the subshell running it, and killing that would leave the server running.
SANDBOX_PID="" DASHBOARD_PID=""
stop_servers() {
  for pid in $DASHBOARD_PID $SANDBOX_PID; do kill "$pid" 2>/dev/null || true; done
  for pid in $DASHBOARD_PID $SANDBOX_PID; do wait "$pid" 2>/dev/null || true; done
}
trap stop_servers EXIT
# A demo starts from nothing: an earlier demo's data directory (marked as such) is removed first.
if [ -e "$ETCHACELL_DATA_DIR/.etchacell-demo" ]; then rm -rf "$ETCHACELL_DATA_DIR"; fi
mkdir -p "$ETCHACELL_DATA_DIR" && touch "$ETCHACELL_DATA_DIR/.etchacell-demo"

step "The effective configuration (defaults + etchacell.toml + ETCHACELL_* variables; secrets masked)"
ETCHACELL_PANOPTES__CLIENT_SECRET=demo-secret-never-shown etchacell config show

step "A bad value is one line naming the key"
ETCHACELL_IMAGING__JPEG_QUALITY=150 etchacell config check || true

step "Create the database schema (SQLite under $ETCHACELL_DATA_DIR; PostgreSQL via ETCHACELL_DATABASE_URL)"
etchacell db upgrade
etchacell db current

step "The named ops queries (ops/queries/*.sql)"
etchacell query --list

step "The same SQL, ready to paste into Grafana"
etchacell query classification_throughput --sql grafana

step "A local stand-in of Zooniverse: the Panoptes sandbox (state in $ETCHACELL_DATA_DIR/sandbox)"
PORT=${SANDBOX_PORT:-8765}
"$BIN/etchacell" sandbox serve --port "$PORT" --state "$ETCHACELL_DATA_DIR/sandbox" > "$ETCHACELL_DATA_DIR/sandbox.log" 2>&1 &
SANDBOX_PID=$!
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
export ETCHACELL_PANOPTES__ENDPOINT="http://127.0.0.1:$PORT" ETCHACELL_PANOPTES__CAESAR_ENDPOINT="http://127.0.0.1:$PORT"
export ETCHACELL_PANOPTES__CLIENT_ID=sandbox ETCHACELL_PANOPTES__CLIENT_SECRET=sandbox-secret
export ETCHACELL_PANOPTES__PROJECT_ID=$(field project_id)
export ETCHACELL_PANOPTES__SEGMENTATION_WORKFLOW_ID=$(field segmentation_workflow_id)
export ETCHACELL_PANOPTES__CORRECTION_WORKFLOW_ID=$(field correction_workflow_id)

step "Sign in with client credentials and look at the project"
etchacell panoptes check
etchacell panoptes register

step "A synthetic SBF-SEM volume with known truth: four cells (OME-Zarr; docs/synthetic-data.md)"
VOLUME="$ETCHACELL_DATA_DIR/hela.zarr"
etchacell synth volume "$VOLUME" --shape 24,1024,1024 --cells 4 --seed 1 --overwrite

step "Subjects: every slice of every nucleus as a 5-frame flipbook (demo size: 400 px crops shown at 200 px)"
export ETCHACELL_IMAGING__CROP_SIZE_PX=400 ETCHACELL_IMAGING__SUBJECT_SIZE_PX=200
etchacell subjects prepare "$VOLUME" --all-rois --out "$ETCHACELL_DATA_DIR/subjects"
etchacell subjects prepare "$VOLUME" --all-rois --out "$ETCHACELL_DATA_DIR/subjects"   # again: nothing new to write

step "Upload: three nuclei for volunteers to trace (train, validation, test); the fourth held back for the model"
etchacell subjects upload "$ETCHACELL_DATA_DIR/subjects" --subject-set "hela traced" \
  --roi cell01 --roi cell02 --roi cell03 --split cell01=train --split cell02=validation --split cell03=test
etchacell subjects upload "$ETCHACELL_DATA_DIR/subjects" --subject-set "hela traced" \
  --roi cell01 --roi cell02 --roi cell03   # again: every subject is already there
etchacell subjects upload "$ETCHACELL_DATA_DIR/subjects" --subject-set "hela held back" \
  --roi cell04 --split cell04=train --no-workflow

step "The loop, live: the daemon, a CPU worker, and two crowds (tracing; correcting the model) until two rounds are done"
# Demo pace: jobs every 5 s, retirement from 6 classifications, a small model trained briefly once 40
# slices have settled, 8 uncertain slices sent for correction per model and ROI, and 3 monitoring slices
# per model, corrected and also traced from scratch: the monitoring guard judges a version once
# correction.min_monitoring_slices (3) are measured. cell04's 24 slices hold two such rounds (2 x 11).
export ETCHACELL_JOBS__INGEST_INTERVAL_S=5 ETCHACELL_JOBS__AGGREGATE_INTERVAL_S=5 ETCHACELL_JOBS__RETIRE_INTERVAL_S=5
export ETCHACELL_JOBS__TRAIN_INTERVAL_S=5 ETCHACELL_JOBS__PUBLISH_INTERVAL_S=5
export ETCHACELL_RETIREMENT__MIN_CLASSIFICATIONS=6
export ETCHACELL_TRAINING__PRESET=small ETCHACELL_TRAINING__MIN_NEW_CONSENSUS_SLICES=40
export ETCHACELL_TRAINING__EPOCHS=6 ETCHACELL_TRAINING__STEPS_PER_EPOCH=20
export ETCHACELL_CORRECTION__BUDGET_PER_ROUND=8 ETCHACELL_CORRECTION__MONITORING_SLICES=3
export ETCHACELL_CORRECTION__MIN_COMPONENT_VOXELS=20 ETCHACELL_CORRECTION__KEEP_LARGEST=true
"$BIN/python" ops/demo_loop.py --volume "$VOLUME" --sandbox-url "http://127.0.0.1:$PORT" --minutes "${DEMO_LOOP_MINUTES:-11}"

step "The loop at a glance (etchacell status reads the same named queries as the dashboard)"
etchacell status

step "The ops dashboard over the demo database: every page answers (the token comes from a file)"
head -c 24 /dev/urandom | base64 > "$ETCHACELL_DATA_DIR/operator-token" && chmod 600 "$ETCHACELL_DATA_DIR/operator-token"
DASHBOARD_PORT=${DEMO_DASHBOARD_PORT:-8089}
ETCHACELL_DASHBOARD__OPERATOR_TOKEN_FILE="$ETCHACELL_DATA_DIR/operator-token" \
  "$BIN/etchacell" dashboard --port "$DASHBOARD_PORT" > "$ETCHACELL_DATA_DIR/dashboard.log" 2>&1 &
DASHBOARD_PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$DASHBOARD_PORT/login" && break; sleep 0.2; done
for page in / /subject-sets /consensus /models /events; do
  curl -s -o /dev/null -w "  %{http_code}  %{time_total} s  $page\n" \
    -H "Authorization: Bearer $(cat "$ETCHACELL_DATA_DIR/operator-token")" "http://127.0.0.1:$DASHBOARD_PORT$page"
done
kill "$DASHBOARD_PID" 2>/dev/null || true
wait "$DASHBOARD_PID" 2>/dev/null || true
DASHBOARD_PID=""
printf 'Open it yourself: ETCHACELL_DATA_DIR=%s ETCHACELL_DASHBOARD__OPERATOR_TOKEN_FILE=%s/operator-token %s/etchacell dashboard\n' \
  "$ETCHACELL_DATA_DIR" "$ETCHACELL_DATA_DIR" "$BIN"

ELAPSED=$(( $(date +%s) - STARTED ))
printf '\nmake demo took %d min %d s.\n' $(( ELAPSED / 60 )) $(( ELAPSED % 60 ))
DATA_DIR_ABSOLUTE=$(cd "$ETCHACELL_DATA_DIR" && pwd)
printf '\nDemo data lives in %s; the database stays there (remove it with `make clean-demo`).\n' "$DATA_DIR_ABSOLUTE"
printf 'Point `etchacell status`, `etchacell query` and the other commands at it (they read ./data otherwise):\n\n'
printf '    export ETCHACELL_DATA_DIR=%q\n' "$DATA_DIR_ABSOLUTE"
