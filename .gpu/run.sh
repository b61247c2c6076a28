#!/usr/bin/env bash
# The GPU figures of docs/performance.md, prepared to run in one short lease of the device
# tool (one card): make bench against karpathy/nanoGPT's own model.py in .nanogpt/ (eager
# and compiled, in the same run), K steps per synchronization, kernels per step and the
# GPU's idle fraction; the diagnostics' cost; the step under sync debug mode "error"; the
# step of a pack of runs against one run alone (packed sweeps).
#   bash .gpu/run.sh 2>&1 | tee .gpu/out.txt
set -euo pipefail
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
B="python3 -m normbench.bench --nanogpt .nanogpt --rounds 1 --per-sync 10"
G="depth=12 model.d_model=768 model.n_heads=12 model.context=1024"
# bench configuration: eager, no diagnostics, CUDA graphs; nanoGPT eager and compiled
$B --steps 20 --warmup 3 --cases normbench,no-diag,reduce-overhead
# GPT-2 small: eager, no diagnostics, compiled; nanoGPT eager and compiled
$B --steps 10 --warmup 3 --cases normbench,no-diag,compile $G
# the diagnostics' cost (plain, per-layer every step, full) at both sizes
python3 -m normbench.bench --diag --steps 10 --warmup 3
python3 -m normbench.bench --diag --steps 5 --warmup 2 $G
# the step never synchronizes
python3 -m pytest -q -p no:cacheprovider tests/run/test_step.py
# packed sweeps: a pack of M runs of the GPU-size LR-sensitivity model against one run
python3 .gpu/pack_step.py 6 1,8,16
python3 .gpu/pack_step.py 24 1,8
