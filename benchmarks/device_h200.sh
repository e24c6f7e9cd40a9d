#!/usr/bin/env bash
# One prepared run on a lent GPU machine (see benchmarks/README.md, "GPU"): the library's unit tests on the
# GPU, then the two step/throughput benchmarks with their JSON written under $OUT. Uses the machine's own
# python3 (JAX with CUDA, optax, torch, pytest); the checkout's src/ is put on PYTHONPATH.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 MPLBACKEND=Agg XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import jax, optax, torch; print('jax', jax.__version__, jax.devices(), 'optax', optax.__version__, 'torch', torch.__version__)"
echo "== unit tests on the GPU (notebooks excluded)"
timeout 200 python3 -m pytest -q -n 6 -p no:cacheprovider tests --ignore=tests/test_pipeline.py \
  --ignore=tests/test_readme.py --ignore=tests/test_environment.py 2>&1 | tail -25 | tee "$OUT/tests.log"
echo "== optimizer step"
timeout 150 python3 benchmarks/optimizer_step.py --no-torch --out "$OUT/optimizer_step_h200.json" 2>&1 | tail -20
echo "== meta-training throughput"
timeout 170 python3 benchmarks/meta_training.py --out "$OUT/meta_training_h200.json" 2>&1 | tail -20
