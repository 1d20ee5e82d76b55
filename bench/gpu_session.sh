#!/usr/bin/env bash
# The one prepared run for a session that is lent an H200 (device tool, kind nvidia-h200).
#
# In ~9 minutes of wall time, each step under its own `timeout` so that a slow one still
# leaves the others' results, everything written under $OUT as it goes:
#   0. preflight: nvidia-smi, the carried wheels installed offline, imports and CUDA checked
#   1. bench/worker_path.py --device cuda: (a) run_pipeline and (b) render_batch at batch 16,
#      then (c) the pipelined worker at depths 1 and 3 (alternating, 2 rounds), the model
#      loaded and warmed on the DeviceLane; `nvidia-smi dmon` samples the GPU meanwhile
#   2. bench/gpu_throughput.py --only-variants --variants cudnn_attention,inductor, with the
#      time left: SD1.5 bs=16 compiled with AccelOptions.attention "cudnn", then without
#      any variant, then with AccelOptions.inductor_tuning (same process)
# A summary of both JSON files is printed last (the tool returns the output's tail).
#
# Files under $OUT (8 at most come back): session.log, nvidia-smi.csv, dmon.log,
# worker_path.json, worker_path.log, gpu_throughput.json, gpu_throughput.log.
#
# --- before the call, here, in the repo root (/.whl/ is already in .gitignore) -------------
# The device has torch 2.11, transformers, accelerate, huggingface_hub, numpy, pillow, but
# not diffusers nor what shared/ imports (pydantic, pydantic-settings, sqlalchemy); pydantic
# 2.14 needs typing-extensions >= 4.16. Versions are this venv's (`pip list`); one of each:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux1_x86_64 -d .whl \
#     diffusers==0.42.1 pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 \
#     python-dotenv==1.2.4 sqlalchemy==2.1.9 annotated-types==0.8.0 \
#     typing-inspection==0.4.5 typing-extensions==4.16.0
#   bash bench/gpu_session.sh --check-wheels     # one wheel per package, ~14 MB in all
#   bash bench/gpu_session.sh --cpu-smoke        # the same steps on the CPU, tiny model
#
# --- the call (device tool `run`) -----------------------------------------------------------
#   command:   bash bench/gpu_session.sh
#   carry:     [".whl"]
#   timeout_s: 600
# The script ends by itself within SESSION_S seconds (540 by default), inside timeout_s.
# $OUT's files come back with the reply (files / files_at; run files_fetch where the reply
# gives one). Then give_back, unless rerunning at once.
#
# --- modes ---------------------------------------------------------------------------------
#   bash bench/gpu_session.sh                  the device run (needs CUDA, .whl carried)
#   bash bench/gpu_session.sh --cpu-smoke      same steps with --device cpu --smoke; wheels
#                                              only checked and dry-installed for Python 3.12;
#                                              OUT defaults to /tmp/imgfarm-gpu-session-smoke
#   bash bench/gpu_session.sh --check-wheels   the .whl folder holds exactly what is needed
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
  annotated_types typing_inspection typing_extensions)
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
    --format=csv >"$OUT/nvidia-smi.csv" 2>&1
  cat "$OUT/nvidia-smi.csv" >>"$LOG"
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

# --- 1. the worker path, pipelined section included ---------------------------------------
T=$(slot 330)
say "1. bench/worker_path.py on $DEVICE (${T} s)"
timeout -k 10 "$T" "$PY" bench/worker_path.py --device "$DEVICE" "${SMOKE[@]}" \
  --batch-sizes "$([ "$MODE" = device ] && echo 16 || echo 4)" --turbo-batch 0 --tiny '' \
  --pipeline-depths 1,3 --no-start-figure --budget-s $((T - 30)) --reserve-s 15 \
  --workdir "$WORK" --json "$OUT/worker_path.json" >"$OUT/worker_path.log" 2>&1
ended 1 $?

# --- 2. cuDNN attention first, and the inductor tuning flags, each against neither ---------
T=$(slot 600)
if [ "$T" -ge 120 ] || [ "$MODE" = cpu-smoke ]; then
  say "2. bench/gpu_throughput.py --only-variants --variants cudnn_attention,inductor (${T} s)"
  # No --budget-s: the compile of each variant either finishes or the timeout ends it; the
  # JSON is rewritten after each variant, so the first one's figure survives the second.
  timeout -k 10 "$T" "$PY" bench/gpu_throughput.py --device "$DEVICE" "${SMOKE[@]}" \
    --only-variants --variants cudnn_attention,inductor --json "$OUT/gpu_throughput.json" \
    >"$OUT/gpu_throughput.log" 2>&1
  ended 2 $?
else
  say "2. skipped: ${T} s left"
fi

if [ -n "$DMON" ]; then
  kill "$DMON" 2>/dev/null
  wait "$DMON" 2>/dev/null
fi

# --- summary (printed last: the tool's reply carries the tail) ----------------------------
"$PY" - "$OUT" 2>&1 <<'EOF' | tee -a "$LOG"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
print("== session summary ==")
wp = out / "worker_path.json"
if wp.exists():
    d = json.loads(wp.read_text())
    s = d.get("summary", {})
    print(f"worker_path: load {s.get('load_model_s')} s, warm-up {s.get('warmup_s_by_bucket')}")
    for k, v in s.get("by_batch", {}).items():
        print(
            f"  [{k}] run_pipeline {v['run_pipeline_img_s']} img/s, render_batch "
            f"{v['render_batch_img_s']} img/s, CPU share {v['cpu_fraction']}, first call "
            f"{v['first_call_s']} s ({v['first_call_graphs_added']} graphs)"
        )
    p = s.get("pipelined")
    if p:
        for depth, f in p["by_depth"].items():
            print(
                f"  [pipelined {p['batches_per_run']} x {p['batch_size']}] depth {depth}: "
                f"{f['images_per_s']} img/s, lane duty {f['duty_cycle']}, lane call "
                f"{f['lane_call_median_s']} s"
            )
        print(f"  depth {p['ratio']['depths']}: {p['ratio']}")
    for e in d.get("errors", []):
        print(f"  ERROR {e['step']}: {e['error']}")
    for f in d.get("findings", []):
        print(f"  FINDING {f}")
    print(f"  skipped: {d.get('skipped')}, elapsed {d.get('elapsed_s')} s")
else:
    print("worker_path: no JSON")
gt = out / "gpu_throughput.json"
if gt.exists():
    d = json.loads(gt.read_text())
    for m in d.get("results", []):
        print(
            f"gpu_throughput: {m['label']} bs={m['batch_size']}: {m['images_per_s']} img/s, "
            f"warm-up {m['first_call_s']} s, compiled {m['compiled']}, error {m['error']}"
        )
    for name, c in d.get("variants", {}).items():
        print(f"  {name} on/off: {c}")
    print(f"  skipped: {d.get('skipped')}, elapsed {d.get('elapsed_s')} s")
else:
    print("gpu_throughput: no JSON")
EOF
say "done; files: $(cd "$OUT" && ls | tr '\n' ' ')"
