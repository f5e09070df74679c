#!/usr/bin/env bash
# The GPU benchmark set of issue 18 in one call: a smoke check of every engine on the default
# JAX backend, then bench_pkpd (engines vs naive jit(vmap(diffeqsolve)), float32 and float64
# rows), bench_glucose (UVA/Padova cohorts, open and closed loop) and bench_stream (10^6
# patients streamed to zarr), each under its own time limit so that one slow part cannot
# take the others' results with it. JSON goes to OUTDIR (default benchmarks/results).
#
#   benchmarks/run_gpu.sh [OUTDIR]          # SCALE=small for a CPU dry run of the script
set -u
OUTDIR=${1:-benchmarks/results}
mkdir -p "$OUTDIR"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if [ "${SCALE:-full}" = small ]; then
  PKPD="--n 2000 --scipy-n 10 --ref-n 200 --diffrax-n 2000 --repeat 1"
  GLU="--n 300 --ref-n 20 --sg-n 0"
  STREAM="--n 100000 --chunk-size 50000"
  PKPD_CHUNK="$PKPD --chunk 2000"
else
  PKPD="--scipy-n 50 --repeat 3"
  GLU="--sg-n 0"
  STREAM=""
  PKPD_CHUNK="--scipy-n 5 --ref-n 500 --diffrax-n 10000 --repeat 3 --chunk 100000"
fi
start=$(date +%s)
step() { echo "=== $1 (t=$(($(date +%s) - start)) s)"; }

step smoke
timeout 90 "$PY" benchmarks/smoke_backend.py
step bench_pkpd
timeout 200 "$PY" benchmarks/bench_pkpd.py $PKPD --out "$OUTDIR/bench_pkpd_gpu.json"
step bench_glucose
timeout 110 "$PY" benchmarks/bench_glucose.py $GLU --out "$OUTDIR/bench_glucose_gpu.json"
step bench_stream
timeout 100 "$PY" benchmarks/bench_stream.py $STREAM --tmpdir "${TMPDIR:-/tmp}" \
  --out "$OUTDIR/bench_stream_gpu.json"
# Tuned option beside the defaults: one batch of 100,000 patients (a GPU has room for far more
# than the CPU-sized default batches).
step bench_pkpd_chunk
timeout 90 "$PY" benchmarks/bench_pkpd.py $PKPD_CHUNK --out "$OUTDIR/bench_pkpd_gpu_chunk.json"
step done
