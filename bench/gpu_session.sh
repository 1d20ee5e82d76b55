#!/usr/bin/env bash
# The one prepared run for a session that is lent an H200 (device tool, kind nvidia-h200).
#
# Within SESSION_S (540) seconds, each step under its own `timeout` (a slow one still leaves
# the others' results), everything written under $OUT as it goes:
#   0. preflight: nvidia-smi, the carried wheels installed offline, imports and CUDA checked
#   1. bench/pipeline_overlap.py --warm-plan: SD1.5 in process, load_model and warm-ups, the
#      worker's render task at depths 1 and 3 (2 rounds of 6 batches of 16), then the rest of
#      the warm plan (its start time); `nvidia-smi dmon` samples the GPU meanwhile (dmon.log)
#   2. bench/gpu_throughput.py --only-variants --variants cudnn_attention,inductor: SD1.5
#      bs=16 compiled with cuDNN attention, without any variant, with inductor tuning
# Each step has its own inductor cache (every warm-up a cold compile, as on a fresh worker).
# $OUT (8 files at most come back): session.log, dmon.log, {pipeline_overlap,
# gpu_throughput}.{json,log}; their summaries are printed last (the tool returns the tail).
#
# Before the call, here in the repo root (/.whl/ is in .gitignore): the device has torch,
# transformers, accelerate, huggingface_hub, numpy and pillow; the rest comes as the cp312
# wheels of bench/gpu_wheels.txt (~17 MB):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux1_x86_64 -d .whl -r bench/gpu_wheels.txt
#   bash bench/gpu_session.sh --check-wheels     # one wheel per package
#   bash bench/gpu_session.sh --cpu-smoke        # the same steps on the CPU, tiny model
#
# Then the device tool's `run`: command `bash bench/gpu_session.sh`, carry [".whl"],
# timeout_s 600; then give_back, unless rerunning at once. --cpu-smoke (wheels only
# dry-installed for Python 3.12) is tests/test_bench_gpu_session_smoke.py. Environment:
# OUT (required on the device), SESSION_S, PYTHON (default python3), WORK (weights, /tmp).

set -uo pipefail
MODE=${1:-device}
case "$MODE" in
  device | --cpu-smoke | --check-wheels) ;;
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
    [ "$n" -eq 1 ] || { echo "wheels: $n of ${name} in .whl (need exactly 1)"; ok=1; }
  done
  echo "wheels: $(find .whl -maxdepth 1 -name '*.whl' 2>/dev/null | wc -l) files," \
    "$(du -sm .whl 2>/dev/null | cut -f1) MB (carry limit 64 MiB with the tree)"
  return $ok
}
[ "$MODE" = --check-wheels ] && { check_wheels; exit $?; }

if [ "$MODE" = --cpu-smoke ]; then
  OUT=${OUT:-/tmp/imgfarm-gpu-session-smoke} SESSION_S=${SESSION_S:-900} DEVICE=cpu
  WORK=${WORK:-/tmp/imgfarm-gpu-session-smoke-work}
  # max_batch 2 (buckets 1 and 2): batches of 2 and 1, the warm-up batch of 2.
  STEP1=(--smoke --jobs 3 --warmup-jobs 2 --rounds 1) STEP2=(--smoke)
  # Here the venv has the stack: pip only resolves the wheels for Python 3.12, into scratch.
  SITE=/tmp/imgfarm-site-dry DRY=(--python-version 3.12 --only-binary=:all:)
else
  [ -n "${OUT:-}" ] || { echo "OUT is not set: this mode is for the device tool" >&2; exit 2; }
  SESSION_S=${SESSION_S:-540} DEVICE=cuda WORK=${WORK:-/tmp/imgfarm-bench-sd15}
  STEP1=(--jobs 96 --rounds 2) STEP2=() SITE=/tmp/site DRY=()
fi
mkdir -p "$OUT"
LOG="$OUT/session.log"
: >"$LOG"
export PYTHONUNBUFFERED=1
say() { echo "[session +$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
# Seconds for the next step: what is left minus a reserve for the summary, at most $1
# (and at least 1: `timeout 0` would mean no limit at all).
slot() {
  local s=$((START + SESSION_S - $(date +%s) - 15))
  echo $((s > $1 ? $1 : s < 1 ? 1 : s))
}
# Step $1 (name $2) under a timeout of at most $3 s: bench/$2.py, the rest its arguments.
step() {
  local n=$1 name=$2 t
  t=$(slot "$3")
  shift 3
  say "$n. bench/$name.py $* (${t} s)"
  TORCHINDUCTOR_CACHE_DIR="$WORK/inductor-$n" timeout -k 10 "$t" "$PY" "bench/$name.py" \
    --device "$DEVICE" "$@" --json "$OUT/$name.json" >"$OUT/$name.log" 2>&1
  local rc=$?
  case $rc in
    0) say "$n. done" ;;
    124 | 137) say "$n. stopped by its timeout (exit $rc): its JSON holds the steps before" ;;
    *) say "$n. exit $rc (see $name.log)" ;;
  esac
}
say "mode $MODE, $SESSION_S s in all, OUT=$OUT"

# --- 0. preflight -------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.current.sm,clocks.max.sm,power.limit,temperature.gpu \
    --format=csv >>"$LOG" 2>&1
fi
if [ -d .whl ] || [ "$DEVICE" = cuda ]; then
  check_wheels 2>&1 | tee -a "$LOG" || { [ "$DEVICE" = cuda ] && say "wheels missing" && exit 3; }
  rm -rf "$SITE"
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    "${DRY[@]}" --target "$SITE" .whl/*.whl >>"$LOG" 2>&1; then
    say "wheels installed in $SITE"
  else
    say "wheel install into $SITE FAILED (see $LOG)"
    [ "$DEVICE" = cuda ] && exit 3
  fi
  [ "$DEVICE" = cuda ] && export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
else
  say "no .whl folder: the device run needs it (see the header)"
fi
# The device has opencv and scikit-image (a worker scores fidelity there too) but no c2pa,
# which the worker loads only to sign: hidden here too, so that a module-level
# `import c2pa` fails here before it fails on the device.
if ! "$PY" - "$DEVICE" 2>&1 <<'EOF' | tee -a "$LOG"; then
import sys
sys.modules["c2pa"] = None
import torch, diffusers, transformers, shared.settings, worker.tasks, worker.render, worker.accel
print("python", sys.version.split()[0], "torch", torch.__version__, "diffusers",
      diffusers.__version__, "transformers", transformers.__version__)
assert sys.argv[1] == "cpu" or torch.cuda.is_available(), "torch sees no CUDA device"
EOF
  say "preflight failed: imports or CUDA"
  exit 3
fi
DMON=
if [ "$DEVICE" = cuda ] && command -v nvidia-smi >/dev/null; then
  # GPU utilisation each second, with wall-clock times: a second view of the duty cycle.
  nvidia-smi dmon -s u -d 1 -o T >"$OUT/dmon.log" 2>&1 &
  DMON=$!
fi

# --- 1. the worker's start and render task on the real model, depth 1 against 3 ------------
step 1 pipeline_overlap 360 --warm-plan "${STEP1[@]}" --depths 1,3 --workdir "$WORK"
# --- 2. cuDNN attention first, and the inductor tuning flags, each against neither ---------
# Each variant's compile finishes or the timeout ends it; the JSON is rewritten after each.
if [ "$(slot 600)" -ge 120 ] || [ "$DEVICE" = cpu ]; then
  step 2 gpu_throughput 600 "${STEP2[@]}" --only-variants --variants cudnn_attention,inductor
else
  say "2. skipped: $(slot 600) s left"
fi
[ -z "$DMON" ] || { kill "$DMON" 2>/dev/null; wait "$DMON" 2>/dev/null; }

# --- summary (printed last: the tool's reply carries the tail) ----------------------------
echo "== session summary ==" | tee -a "$LOG"
"$PY" -m bench.harness "$OUT/pipeline_overlap.json" "$OUT/gpu_throughput.json" 2>&1 | tee -a "$LOG"
say "done; files: $(cd "$OUT" && ls | tr '\n' ' ')"
