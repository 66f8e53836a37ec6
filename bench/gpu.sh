#!/usr/bin/env bash
# One command for the GPU benchmarks (bench/README.md): it installs what it needs, runs the training
# and inference benchmarks at real shapes, and appends the figures with device, date and commit to
# bench/RESULTS.md. Each part runs under its own time budget so the whole fits 8 minutes on one GPU;
# a part that runs out of time is recorded as such and the rest still run.
#
#   bash bench/gpu.sh                  # on a GPU machine
#   bash bench/gpu.sh --dry-run        # the plan, then every part at its tiniest size on CPU
#   bash bench/gpu.sh --plan           # the plan only
#   bash bench/gpu.sh --parts setup,engine   # the inference engine's benchmark (bench/engine.py) alone
#
# Options: --parts LIST runs these parts (default: all but engine, which has its own run);
# --results FILE (or $LLAVAKIT_BENCH_RESULTS) takes the appended section (default
# bench/RESULTS.md; for --dry-run, RESULTS.md in the --out folder); --out DIR keeps the JSON of every part (default runs/bench/gpu-DATE); --no-install skips the
# set-up; $PYTHON names the interpreter (default python3).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
MODE=gpu
INSTALL=1
RESULTS=${LLAVAKIT_BENCH_RESULTS:-}
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) MODE=dry ;;
    --plan) MODE=plan ;;
    --no-install) INSTALL=0 ;;
    --results) RESULTS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --parts) IFS=, read -r -a SELECTED <<< "$2"; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench/gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
OUT=${OUT:-$ROOT/runs/bench/gpu-$(date -u +%Y%m%dT%H%M%SZ)}
if [ -z "$RESULTS" ]; then  # a dry run's CPU figures never land in the committed results
  if [ "$MODE" = dry ]; then RESULTS=$OUT/RESULTS.md; else RESULTS=$ROOT/bench/RESULTS.md; fi
fi
CUDA_WHEELS=${LLAVAKIT_TORCH_INDEX:-https://download.pytorch.org/whl/cu128}

# The budget, seconds (one H200-class GPU; 460 of the 480 allowed, the rest is the report):
#   setup 110: pip install -e '.[serve,train]' (and a CUDA torch when the installed one has no CUDA)
#   train-0.5b 95: stage-2 (everything trained) of the 0.5B shape, 8k rows, each lever alone and all
#   train-7b-lora 95: the 7B shape under LoRA, 8k rows (most of it is building two 7B models)
#   inference 80: decode at batch 1/16/64 and time to first token for one 1080p image, 0.5B shape
#   serve-model 20 + serve-load 60: the 64-client load on `llavakit serve` with a 0.5B checkpoint
#   engine 400 (its own run, --parts setup,engine: 510): bench/engine.py at the 0.5B shape, decode at batch
#     1/16/64 eager and compiled vs transformers, the 32-client mixed load on continuous / static / one at a
#     time, the five-turn 1080p chat with and without the media cache
PARTS=(setup train-0.5b train-7b-lora inference serve-model serve-load)
ALL_PARTS=("${PARTS[@]}" engine)
declare -A BUDGET=([setup]=110 [train-0.5b]=95 [train-7b-lora]=95 [inference]=80 [serve-model]=20 [serve-load]=60
                   [engine]=400)
if [ -n "${SELECTED+x}" ]; then
  for part in "${SELECTED[@]}"; do
    [ -n "${BUDGET[$part]+x}" ] || { echo "bench/gpu.sh: unknown part $part (parts: ${ALL_PARTS[*]})" >&2; exit 2; }
  done
  PARTS=("${SELECTED[@]}")
fi

part_command() {  # the command of a part: real sizes on a GPU, the tiniest on CPU for --dry-run
  local part=$1
  if [ "$MODE" = dry ]; then
    local train_size=(--shape tiny --device cpu --batch 2 --seq 160 --steps 1 --warmup 0)
    local infer_size=(--shape tiny --device cpu --batches 1,2 --new-tokens 2 --repeats 1 --image-size 40x50
                      --ttft-image 90x120)
    local serve_size=(--requests 8 --clients 4 --pool 4) shape=tiny
    local engine_size=(--shape tiny --device cpu --batches 1,2 --new-tokens 3 --repeats 1 --image-size 40x50
                       --clients 4 --load-requests 8 --short-tokens 3 --chat-tokens 3)
  else
    local train_size=(--shape 0.5b --batch 2 --seq 8192 --steps 5 --warmup 2)
    local infer_size=(--shape 0.5b --batches 1,16,64 --new-tokens 64 --repeats 2)
    local serve_size=(--requests 500 --clients 64 --pool 48) shape=0.5b
    local engine_size=(--shape 0.5b --device cuda --batches 1,16,64 --repeats 2 --clients 32 --load-requests 128)
  fi
  case $part in
    setup) echo "$PY" -m pip install -q -e "$ROOT[serve,train]" ;;
    train-0.5b) echo "$PY" "$ROOT/bench/train.py" "${train_size[@]}" --mode full \
        --levers packing,group,fused_ce,ckpt,fused_adamw --out "$OUT/train-0.5b.json" ;;
    train-7b-lora)
      if [ "$MODE" = dry ]; then echo "$PY" "$ROOT/bench/train.py" "${train_size[@]}" --mode lora \
          --levers fused_ce,ckpt --out "$OUT/train-7b-lora.json"
      else echo "$PY" "$ROOT/bench/train.py" --shape 7b --mode lora --batch 1 --seq 8192 --steps 3 --warmup 1 \
          --levers fused_ce,ckpt --out "$OUT/train-7b-lora.json"; fi ;;
    inference) echo "$PY" "$ROOT/bench/inference.py" "${infer_size[@]}" --out "$OUT/inference.json" ;;
    serve-model) echo "$PY" "$ROOT/bench/models.py" --shape "$shape" --save "$OUT/serve-model" ;;
    engine) echo "$PY" "$ROOT/bench/engine.py" "${engine_size[@]}" --out "$OUT/engine.json" ;;
    serve-load) echo "$PY" "$ROOT/bench/serve_load.py" --model "$OUT/serve-model" "${serve_size[@]}" \
        --out "$OUT/serve-load.json" ;;
  esac
}

echo "bench/gpu.sh ($MODE): results appended to $RESULTS, JSON in $OUT"
total=0
for part in "${PARTS[@]}"; do
  total=$((total + BUDGET[$part]))
  printf '  %-14s %4ss  %s\n' "$part" "${BUDGET[$part]}" "$(part_command "$part")"
done
echo "  total budget ${total}s"
[ "$MODE" = plan ] && exit 0

mkdir -p "$OUT"
: > "$OUT/status.tsv"
for part in "${PARTS[@]}"; do
  if [ "$part" = setup ]; then
    if [ "$MODE" = dry ] || [ "$INSTALL" = 0 ]; then
      printf 'setup\tskipped\t0\n' >> "$OUT/status.tsv"; continue
    fi
    start=$SECONDS
    timeout "${BUDGET[setup]}" bash -c "
      '$PY' -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
        || '$PY' -m pip install -q torch --index-url '$CUDA_WHEELS'
      $(part_command setup)"
    rc=$?
    printf 'setup\t%s\t%s\n' "$rc" "$((SECONDS - start))" >> "$OUT/status.tsv"
    continue
  fi
  read -r -a command <<< "$(part_command "$part")"
  echo "== $part (budget ${BUDGET[$part]}s): ${command[*]}"
  start=$SECONDS
  timeout --signal=INT --kill-after=10 "${BUDGET[$part]}" "${command[@]}"
  rc=$?
  [ $rc -eq 124 ] && rc=timeout
  printf '%s\t%s\t%s\n' "$part" "$rc" "$((SECONDS - start))" >> "$OUT/status.tsv"
done

"$PY" "$ROOT/bench/gpu_report.py" --dir "$OUT" --results "$RESULTS" --mode "$MODE"
