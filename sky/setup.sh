#!/usr/bin/env bash
# SkyPilot `setup:` for every spotrun task, run on each (re)launch from the synced workdir.
# A recovery on a disk that already holds the venv for this exact lock + pyproject.toml reuses it (a
# hash check, well under a second); otherwise uv installs the pinned versions (requirements-cuda.lock).
# The timings go to ~/.spotrun/setup.json so the attempt can report what setup cost.
set -euo pipefail
VENV=${SPOTRUN_VENV:-$HOME/spotrun-venv}
LOCK=${SPOTRUN_LOCK:-requirements-cuda.lock}
RECORD=${SPOTRUN_SETUP_RECORD:-$HOME/.spotrun/setup.json}
start=$(date +%s.%N)
want=$(cat "$LOCK" pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.spotrun-lock" 2>/dev/null)" = "$want" ]; then
  reused=true
else
  reused=false
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q uv==0.13.9
  # --no-deps: the lock already lists every package; nothing is resolved again on the VM.
  # --compile-bytecode: the .pyc files are made here, not by the first processes of the restart.
  "$VENV/bin/uv" pip install -q --compile-bytecode --python "$VENV/bin/python" -r "$LOCK" -e . --no-deps
  echo "$want" > "$VENV/.spotrun-lock"
fi
mkdir -p "$(dirname "$RECORD")"
printf '{"start": %s, "end": %s, "reused": %s, "lock_sha256": "%s"}\n' \
  "$start" "$(date +%s.%N)" "$reused" "$want" > "$RECORD"
echo "spotrun: setup $([ $reused = true ] && echo reused || echo installed) $VENV"
