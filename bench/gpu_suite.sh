#!/usr/bin/env bash
# One device run: cfbi-jax beside the official CFBI code on one GPU, in one
# table (bench/gpu_suite.py says what each column is). Fits one run of the
# device tool (at most 8 minutes); every part has its own time limit and
# writes to $OUT as it goes, so one failure costs only its part.
#
#   bench/gpu_suite.sh            # on the GPU machine (device tool)
#   bench/gpu_suite.sh --smoke    # the same code on CPU, tiny models (tests)
#   bench/gpu_suite.sh --static   # no run: the step's static cost in its
#                                 # GPU form, any machine (bench/step_cost.py)
#   bench/gpu_suite.sh --eval     # evaluation throughput: CFBI R101 (random
#                                 # weights) at 480p, video_batch 1 2 4
#                                 # (bench/eval_throughput.py)
#   bench/gpu_suite.sh --families # per-frame time of FEELVOS and VideoMatch
#                                 # R101 at 480p, VideoMatch's blocked top K
#                                 # against the plain one
#                                 # (bench/family_speed.py)
#   extra arguments go to bench/gpu_suite.py (--models, --settings, --trace)
#
# Carried along in git-ignored folders of the checkout (device tool `carry`):
#   .official/  a copy of ../shared/bench (the official tree and
#               official_cfbi_gpu.py); without it the official rows are
#               skipped with a message;
#   .whl/       wheels the GPU image lacks (flax 0.12.12 for its JAX 0.11,
#               optax, orbax-checkpoint, ml-collections), installed with
#               --no-deps into a private folder.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-runs/gpu_suite}
mkdir -p "$OUT"
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 ))s] $*" >&2; }
PY=${PYTHON:-python3}

if [ "${1:-}" = "--smoke" ]; then
  shift
  el "smoke: CPU, tiny models; official code skipped (it has no tiny model)"
  JAX_PLATFORMS=cpu exec "$PY" bench/gpu_suite.py --smoke --out "$OUT" \
      --models cfbi cfbip --settings default fast_bf16 --objects 2 5 "$@"
fi

if [ "${1:-}" = "--static" ]; then
  shift
  el "static: the step's GPU form lowered for CUDA, read (bench/step_cost.py)"
  exec "$PY" bench/gpu_suite.py --static --out "$OUT" "$@"
fi

EVAL=""
if [ "${1:-}" = "--eval" ]; then
  shift
  EVAL=1
fi
FAMILIES=""
if [ "${1:-}" = "--families" ]; then
  shift
  FAMILIES=1
fi

if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target /tmp/cfbi_site .whl/*.whl >/dev/null 2>&1
  export PYTHONPATH=/tmp/cfbi_site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    > "$OUT/env.txt" 2>&1
"$PY" -c "import jax, flax; print('jax', jax.__version__, 'flax', \
flax.__version__, jax.devices())" >> "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >&2

if [ -n "$EVAL" ]; then
  el "eval: frames/s and peak memory for video_batch 1 2 4 (one device)"
  timeout 420 "$PY" bench/eval_throughput.py --random_variant cfbi_resnet101 \
      --fake_devices 0 --videos 8 --frames 12 --height 480 --width 854 \
      --devices 1 --video_batch 1 2 4 --out "$OUT/eval_throughput.md" "$@" \
      2>&1 | tee "$OUT/eval_throughput.log" | grep -v '^I0000' >&2
  el "eval rc=$?"
  exit 0
fi

if [ -n "$FAMILIES" ]; then
  el "families: FEELVOS and VideoMatch R101 per frame at 480p"
  timeout 420 "$PY" bench/family_speed.py --models feelvos_resnet101 \
      videomatch_resnet101 --size 480 854 --objects 2 --frames 12 \
      --override videomatch_resnet101:top_k_block=0 "$@" \
      2>&1 | tee "$OUT/family_speed.log" | grep -v '^I0000' >&2
  el "families rc=$?"
  exit 0
fi

OFFICIAL=""
if [ -f .official/official_cfbi_gpu.py ]; then
  el official
  timeout 140 "$PY" .official/official_cfbi_gpu.py --size 481 849 \
      --objects 2 5 --models cfbi cfbip --settings default f16 fast \
      --repeats 10 --device cuda --out "$OUT/official.jsonl" \
      > "$OUT/official.log" 2>&1
  el "official rc=$?"
  OFFICIAL="$OUT/official.jsonl"
else
  el "official code not carried (.official/ missing): official rows skipped"
fi

el cfbi-jax
# float32 and the fastest reduced-precision setting by default (8 children,
# each compiling its model); --settings default fast fast_bf16 adds more.
timeout 420 "$PY" bench/gpu_suite.py --out "$OUT" --official "$OFFICIAL" \
    --settings default fast_bf16 --child-timeout 150 "$@"
el "cfbi-jax rc=$?"
