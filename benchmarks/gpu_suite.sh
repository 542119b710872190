#!/usr/bin/env bash
# The GPU suite in one command: the CUDA tests, then the speed benchmarks on this machine's
# GPU, then one table of every figure against its target (benchmarks/gpu_suite_report.py).
# Runs on the machine's own torch with the checkout on PYTHONPATH: no install, no package
# index; pytest, numpy, torch are all it needs (no snakemake, jsonschema or PyYAML).
# About 4-6 minutes on an H100. Results (JSON, test report) go to $OUT (default: a temp dir).
#   bash benchmarks/gpu_suite.sh            # or: make gpu-suite
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$(mktemp -d -t hypersparse-gpu-XXXX)}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_suite: no CUDA GPU visible to $PY; nothing to measure" >&2
    exit 2
fi
"$PY" -c "import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '|', torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"
git rev-parse --short HEAD 2>/dev/null | tee "$OUT/commit.txt" || true

echo "== 1/4 CUDA tests"
"$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_capture.py tests/test_data_loader.py \
    --junitxml="$OUT/cuda_tests.xml" 2>&1 | tail -15
echo "== 2/4 HyperSparse step overhead"
"$PY" benchmarks/bench_hs_overhead.py --device cuda --steps 20 --json "$OUT/hs.json" 2>&1 | tail -6
echo "== 3/4 training step incl. data: engine vs authors'-style reference"
"$PY" benchmarks/bench_train_step.py --device cuda --memory off --json "$OUT/step.json" 2>&1 | tail -9
echo "== 4/4 real engine epochs and the whole ART run"
"$PY" benchmarks/bench_engine_epoch.py --device cuda --memory off --eager-too --json "$OUT/engine.json" 2>&1 | tail -9
echo "== summary (files in $OUT)"
"$PY" benchmarks/gpu_suite_report.py "$OUT"
