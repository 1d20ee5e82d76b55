#!/usr/bin/env bash
# The one prepared run for a session that is lent an H200 (device tool, kind nvidia-h200).
#
# Within SESSION_S (540) seconds, each step under its own `timeout` so that a slow one still
# leaves the others' results, everything written under $OUT as it goes:
#   0. preflight: nvidia-smi, the carried wheels installed offline, imports and CUDA checked
#   1. bench/pipeline_overlap.py --in-process --model sd15: the worker's own render task at
#      pipeline depths 1 and 3 (2 rounds of 6 batches of 16): images/s and the device lane's
#      duty cycle per depth; `nvidia-smi dmon` samples the GPU meanwhile (dmon.log)
#   2. bench/worker_path.py: run_pipeline and render_batch at batch 16 after that bucket's
#      warm-up, then the other buckets' warm-ups while the time lasts
#   3. bench/gpu_throughput.py --only-variants --variants cudnn_attention,inductor: SD1.5
#      bs=16 compiled with cuDNN attention, without any variant, with inductor tuning
# Steps 1 and 2 share the random SD1.5 checkpoint under $WORK (built once); each step has
# its own inductor cache, so every warm-up is a cold compile, as on a fresh worker. Files
# under $OUT (8 at most come back): session.log, dmon.log, {pipeline_overlap,worker_path,
# gpu_throughput}.{json,log}; the summary of the JSON files is printed last (the tool
# returns the output's tail).
#
# --- before the call, here, in the repo root (/.whl/ is already in .gitignore) -------------
# The device has torch 2.11, transformers, accelerate, huggingface_hub, numpy, pillow, but
# not diffusers nor what shared/ and worker/tasks.py import; pydantic 2.14 needs
# typing-extensions >= 4.16. Versions are this venv's (`pip list`); one of each:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux1_x86_64 -d .whl \
#     diffusers==0.42.1 pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 \
#     python-dotenv==1.2.4 sqlalchemy==2.1.9 annotated-types==0.8.0 \
#     typing-inspection==0.4.5 typing-extensions==4.16.0 celery==5.7.0 kombu==5.7.0 \
#     billiard==4.3.2 vine==5.1.0 amqp==5.4.2 click==8.5.1 python-dateutil==2.9.0.post0 \
#     six==1.17.0 tzlocal==5.4.5 tenacity==9.2.1 cachetools==8.0.2 redis==8.1.0
#   bash bench/gpu_session.sh --check-wheels     # one wheel per package, ~17 MB in all
#   bash bench/gpu_session.sh --cpu-smoke        # the same steps on the CPU, tiny model
#
# --- the call (device tool `run`) -----------------------------------------------------------
#   command: bash bench/gpu_session.sh    carry: [".whl"]    timeout_s: 600
# Then give_back, unless rerunning at once.
#
# --- modes ---------------------------------------------------------------------------------
#   (none)          the device run (needs CUDA, .whl carried)
#   --cpu-smoke     same steps with --device cpu --smoke; the wheels only checked and
#                   dry-installed for Python 3.12; OUT defaults to /tmp/imgfarm-gpu-session-smoke
#   --check-wheels  the .whl folder holds exactly what is needed
# Environment: OUT (required on the device), SESSION_S (wall seconds for the whole script),
# PYTHON (default python3: on the device the one with torch; here the activated venv's),
# WORK (weights and objects; /tmp by default). tests/test_bench_worker_path_smoke.py runs
# --cpu-smoke, so a renamed flag breaks a test here rather than the device run.

set -uo pipefail

MODE=device
case "${1:-}" in
  --cpu-smoke) MODE=cpu-smoke ;;
  --check-wheels) MODE=check-wheels ;;
  "") ;;
  *) echo "usage: bash bench/gpu_session.sh [--cpu-smoke | --check-wheels]" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}
WHEELS=(diffusers pydantic pydantic_core pydantic_settings python_dotenv sqlalchemy
  annotated_types typing_inspection typing_extensions celery kombu billiard vine amqp click
  python_dateutil six tzlocal tenacity cachetools redis)
START=$(date +%s)

check_wheels() {
  local ok=0 name n
  for name in "${WHEELS[@]}"; do
    n=$(find .whl -maxdepth 1 -type f -iname "${name}-*.whl" 2>/dev/null | wc -l)
    if [ "$n" -ne 1 ]; then
      echo "wheels: $n of ${name} in .whl (need exactly 1)"
      ok=1
    fi
  done
  echo "wheels: $(find .whl -maxdepth 1 -type f -name '*.whl' 2>/dev/null | wc -l) files," \
    "$(du -sm .whl 2>/dev/null | cut -f1) MB (carry limit 64 MiB with the tree)"
  return $ok
}

if [ "$MODE" = check-wheels ]; then
  check_wheels
  exit $?
fi

if [ "$MODE" = cpu-smoke ]; then
  OUT=${OUT:-/tmp/imgfarm-gpu-session-smoke}
  SESSION_S=${SESSION_S:-900}
  DEVICE=cpu
  SMOKE=(--smoke)
  WORK=${WORK:-/tmp/imgfarm-gpu-session-smoke-work}
else
  if [ -z "${OUT:-}" ]; then
    echo "OUT is not set: this mode is for the device tool (try --cpu-smoke)" >&2
    exit 2
  fi
  SESSION_S=${SESSION_S:-540}
  DEVICE=cuda
  SMOKE=()
  WORK=${WORK:-/tmp/imgfarm-worker-path}
fi
mkdir -p "$OUT"
LOG="$OUT/session.log"
: >"$LOG"
export PYTHONUNBUFFERED=1

say() { echo "[session +$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
left() { echo $((START + SESSION_S - $(date +%s))); }
ended() {
  case $2 in
    0) say "$1. done" ;;
    124 | 137) say "$1. stopped by its timeout (exit $2): its JSON holds the steps before" ;;
    *) say "$1. exit $2 (see its log)" ;;
  esac
}
# Seconds for the next step: what is left minus a reserve for the summary, at most $1.
slot() {
  local s=$(($(left) - 15))
  [ "$s" -gt "$1" ] && s=$1
  [ "$s" -lt 1 ] && s=1 # `timeout 0` would mean no limit at all
  echo "$s"
}

say "mode $MODE, $SESSION_S s in all, OUT=$OUT"

# --- 0. preflight -------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.current.sm,clocks.max.sm,power.limit,temperature.gpu \
    --format=csv >>"$LOG" 2>&1
fi

if [ "$MODE" = device ]; then
  check_wheels 2>&1 | tee -a "$LOG" || { say "wheels missing: see the header"; exit 3; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 || { say "wheel install failed"; exit 3; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  say "wheels installed in /tmp/site"
else
  # Not installed here (the venv has the stack; cp312 wheels do not fit this Python): the
  # set is checked, and pip resolves the same install for Python 3.12 into a scratch dir.
  if [ -d .whl ]; then
    check_wheels 2>&1 | tee -a "$LOG"
    rm -rf /tmp/imgfarm-site-dry
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --python-version 3.12 --only-binary=:all: --target /tmp/imgfarm-site-dry .whl/*.whl \
      >>"$LOG" 2>&1; then
      say "wheels: dry install for Python 3.12 ok"
    else
      say "wheels: dry install for Python 3.12 FAILED (see $LOG)"
    fi
  else
    say "no .whl folder: the device run needs it (see the header)"
  fi
fi

PRE=$("$PY" - 2>&1 <<EOF
import sys
import torch, diffusers, transformers, pydantic, sqlalchemy
import shared.settings, worker.render, worker.device, worker.accel
print("python", sys.version.split()[0], "torch", torch.__version__, "diffusers",
      diffusers.__version__, "transformers", transformers.__version__, "pydantic",
      pydantic.__version__, "sqlalchemy", sqlalchemy.__version__)
if "$DEVICE" == "cuda":
    assert torch.cuda.is_available(), "torch sees no CUDA device"
    print("gpu", torch.cuda.get_device_name(0), "cuda", torch.version.cuda)
EOF
)
RC=$?
echo "$PRE" | tail -20 | tee -a "$LOG"
if [ $RC -ne 0 ]; then
  say "preflight failed: imports or CUDA"
  exit 3
fi

DMON=
if [ "$MODE" = device ] && command -v nvidia-smi >/dev/null; then
  # GPU utilisation each second, with wall-clock times: lines up with the pipelined runs'
  # "from HH:MM:SS" in worker_path.log, a second view of the lane's duty cycle.
  nvidia-smi dmon -s u -d 1 -o T >"$OUT/dmon.log" 2>&1 &
  DMON=$!
fi

# --- 1. depth 1 against 3: the worker's render task on the real model -----------------------
T=$(slot 200)
say "1. bench/pipeline_overlap.py --in-process --model sd15 on $DEVICE (${T} s)"
# Smoke: 2 batches of 4 per run, the untimed warm-up batch of 4 too.
JOBS=$([ "$MODE" = device ] && echo "--jobs 96" || echo "--jobs 8 --warmup-jobs 4")
# shellcheck disable=SC2086
TORCHINDUCTOR_CACHE_DIR="$WORK/inductor-1" timeout -k 10 "$T" "$PY" bench/pipeline_overlap.py \
  --in-process --model sd15 --device "$DEVICE" "${SMOKE[@]}" $JOBS --depths 1,3 --rounds \
  "$([ "$MODE" = device ] && echo 2 || echo 1)" --workdir "$WORK" \
  --json "$OUT/pipeline_overlap.json" >"$OUT/pipeline_overlap.log" 2>&1
ended 1 $?

# --- 2. the render path at batch 16, and each bucket's warm-up ------------------------------
T=$(slot 160)
say "2. bench/worker_path.py on $DEVICE (${T} s)"
TORCHINDUCTOR_CACHE_DIR="$WORK/inductor-2" timeout -k 10 "$T" "$PY" bench/worker_path.py \
  --device "$DEVICE" "${SMOKE[@]}" --batch-sizes "$([ "$MODE" = device ] && echo 16 || echo 4)" \
  "$([ "$MODE" = device ] && echo --budget-s=$((T - 20)) || echo --no-start-figure)" \
  --workdir "$WORK" --json "$OUT/worker_path.json" >"$OUT/worker_path.log" 2>&1
ended 2 $?

# --- 3. cuDNN attention first, and the inductor tuning flags, each against neither ---------
T=$(slot 600)
if [ "$T" -ge 120 ] || [ "$MODE" = cpu-smoke ]; then
  say "3. bench/gpu_throughput.py --only-variants --variants cudnn_attention,inductor (${T} s)"
  # No --budget-s: the compile of each variant either finishes or the timeout ends it; the
  # JSON is rewritten after each variant, so the first one's figure survives the second.
  TORCHINDUCTOR_CACHE_DIR="$WORK/inductor-3" timeout -k 10 "$T" "$PY" bench/gpu_throughput.py \
    --device "$DEVICE" "${SMOKE[@]}" --only-variants --variants cudnn_attention,inductor \
    --json "$OUT/gpu_throughput.json" >"$OUT/gpu_throughput.log" 2>&1
  ended 3 $?
else
  say "3. skipped: ${T} s left"
fi

if [ -n "$DMON" ]; then
  kill "$DMON" 2>/dev/null
  wait "$DMON" 2>/dev/null
fi

# --- summary (printed last: the tool's reply carries the tail) ----------------------------
"$PY" - "$OUT" 2>&1 <<'EOF' | tee -a "$LOG"
import json, sys
from pathlib import Path

from bench.harness import print_summary  # the format each bench prints its own in

print("== session summary ==")
for name in ("pipeline_overlap", "worker_path", "gpu_throughput"):
    path = Path(sys.argv[1]) / f"{name}.json"
    if path.exists():
        print_summary(name, json.loads(path.read_text()))
    else:
        print(f"{name}: no JSON")
EOF
say "done; files: $(cd "$OUT" && ls | tr '\n' ' ')"
