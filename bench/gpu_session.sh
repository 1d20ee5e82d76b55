#!/usr/bin/env bash
# The one prepared run for a session that is lent an H200 (device tool, kind nvidia-h200).
#
# Within SESSION_S (540) seconds, each step under its own `timeout` so that a slow one still
# leaves the others' results, everything written under $OUT as it goes:
#   0. preflight: nvidia-smi, the carried wheels installed offline, imports and CUDA checked
#   1. bench/pipeline_overlap.py --warm-plan (SD1.5, in process): load_model and the
#      batch-16 warm-up, the worker's own render task at pipeline depths 1 and 3 (2 rounds
#      of 6 batches of 16: images/s, duty cycle, pipeline-only images/s), then the rest of
#      the worker's warm plan while the time lasts (its start time); `nvidia-smi dmon`
#      samples the GPU meanwhile (dmon.log)
#   2. bench/gpu_throughput.py --only-variants --variants cudnn_attention,inductor: SD1.5
#      bs=16 compiled with cuDNN attention, without any variant, with inductor tuning
# Each step has its own inductor cache, so every warm-up is a cold compile, as on a fresh
# worker. Files under $OUT (8 at most come back): session.log, dmon.log,
# {pipeline_overlap,gpu_throughput}.{json,log}; their summaries are printed last (the tool
# returns the output's tail).
#
# --- before the call, here, in the repo root (/.whl/ is in .gitignore) ---------------------
# The device has torch, transformers, accelerate, huggingface_hub, numpy and pillow; the
# rest comes as cp312 wheels, bench/gpu_wheels.txt (~17 MB in all):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux1_x86_64 -d .whl -r bench/gpu_wheels.txt
#   bash bench/gpu_session.sh --check-wheels     # one wheel per package
#   bash bench/gpu_session.sh --cpu-smoke        # the same steps on the CPU, tiny model
#
# Then the device tool's `run`: command `bash bench/gpu_session.sh`, carry [".whl"],
# timeout_s 600; then give_back, unless rerunning at once. --cpu-smoke (--device cpu --smoke,
# the wheels only dry-installed for Python 3.12) is tests/test_bench_gpu_session_smoke.py, so
# a renamed flag breaks a test here rather than the device run. Environment: OUT (required
# on the device), SESSION_S, PYTHON (default python3), WORK (weights; /tmp by default).

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
START=$(date +%s)

check_wheels() {
  local ok=0 name n
  # Wheel file names spell a project's "-" as "_".
  for name in $(sed -e 's/#.*//' -e 's/==.*//' -e 's/-/_/g' bench/gpu_wheels.txt); do
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
  WORK=${WORK:-/tmp/imgfarm-gpu-session-smoke-work}
  # 2 batches, 4 and 3 jobs (3 padded to the warm bucket 4); the warm-up batch of 4 too.
  STEP1=(--smoke --jobs 7 --warmup-jobs 4 --rounds 1)
  STEP2=(--smoke)
else
  if [ -z "${OUT:-}" ]; then
    echo "OUT is not set: this mode is for the device tool (try --cpu-smoke)" >&2
    exit 2
  fi
  SESSION_S=${SESSION_S:-540}
  DEVICE=cuda
  WORK=${WORK:-/tmp/imgfarm-bench-sd15}
  STEP1=(--jobs 96 --rounds 2)
  STEP2=()
fi
mkdir -p "$OUT"
LOG="$OUT/session.log"
: >"$LOG"
export PYTHONUNBUFFERED=1

say() { echo "[session +$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
ended() {
  case $2 in
    0) say "$1. done" ;;
    124 | 137) say "$1. stopped by its timeout (exit $2): its JSON holds the steps before" ;;
    *) say "$1. exit $2 (see its log)" ;;
  esac
}
# Seconds for the next step: what is left minus a reserve for the summary, at most $1.
slot() {
  local s=$((START + SESSION_S - $(date +%s) - 15))
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

# Here the venv has the stack and cp312 wheels do not fit its Python: pip only resolves the
# same install for Python 3.12 into a scratch folder.
SITE=/tmp/site
DRY=()
[ "$MODE" = device ] || { SITE=/tmp/imgfarm-site-dry; DRY=(--python-version 3.12 --only-binary=:all:); }
if [ -d .whl ] || [ "$MODE" = device ]; then
  check_wheels 2>&1 | tee -a "$LOG" || { [ "$MODE" = device ] && say "wheels missing" && exit 3; }
  rm -rf "$SITE"
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    "${DRY[@]}" --target "$SITE" .whl/*.whl >>"$LOG" 2>&1; then
    say "wheels installed in $SITE"
  else
    say "wheel install into $SITE FAILED (see $LOG)"
    [ "$MODE" = device ] && exit 3
  fi
  [ "$MODE" = device ] && export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
else
  say "no .whl folder: the device run needs it (see the header)"
fi

# The device has opencv and scikit-image (fidelity scoring runs there as on any worker) but
# no c2pa: the worker loads it only to sign for a team with a certificate, and the smoke
# hides it so that a module-level `import c2pa` fails here before it fails on the device.
PRE=$("$PY" - 2>&1 <<EOF
import sys
if "$MODE" == "cpu-smoke":
    sys.modules["c2pa"] = None
import torch, diffusers, transformers, pydantic, sqlalchemy
import shared.settings, worker.render, worker.device, worker.accel, worker.tasks
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
  # GPU utilisation each second, with wall-clock times: a second view of the duty cycle.
  nvidia-smi dmon -s u -d 1 -o T >"$OUT/dmon.log" 2>&1 &
  DMON=$!
fi

# --- 1. the worker's start and render task on the real model, depth 1 against 3 ------------
T=$(slot 360)
say "1. bench/pipeline_overlap.py --warm-plan on $DEVICE (${T} s)"
TORCHINDUCTOR_CACHE_DIR="$WORK/inductor-1" timeout -k 10 "$T" "$PY" bench/pipeline_overlap.py \
  --warm-plan --device "$DEVICE" "${STEP1[@]}" --depths 1,3 \
  --workdir "$WORK" --json "$OUT/pipeline_overlap.json" >"$OUT/pipeline_overlap.log" 2>&1
ended 1 $?

# --- 2. cuDNN attention first, and the inductor tuning flags, each against neither ---------
T=$(slot 600)
if [ "$T" -ge 120 ] || [ "$MODE" = cpu-smoke ]; then
  say "2. bench/gpu_throughput.py --only-variants --variants cudnn_attention,inductor (${T} s)"
  # The compile of each variant either finishes or the timeout ends it; the JSON is
  # rewritten after each variant, so the first one's figure survives the second.
  TORCHINDUCTOR_CACHE_DIR="$WORK/inductor-2" timeout -k 10 "$T" "$PY" bench/gpu_throughput.py \
    --device "$DEVICE" "${STEP2[@]}" --only-variants --variants cudnn_attention,inductor \
    --json "$OUT/gpu_throughput.json" >"$OUT/gpu_throughput.log" 2>&1
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

from bench.harness import print_summary  # the format each bench prints its own in

print("== session summary ==")
for name in ("pipeline_overlap", "gpu_throughput"):
    path = Path(sys.argv[1]) / f"{name}.json"
    if path.exists():
        print_summary(name, json.loads(path.read_text()))
    else:
        print(f"{name}: no JSON")
EOF
say "done; files: $(cd "$OUT" && ls | tr '\n' ' ')"
