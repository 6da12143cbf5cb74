#!/usr/bin/env bash
# The GPU checks of issue 8, on a machine with one CUDA GPU, Python 3.12 and PyTorch, and the
# wheels from scripts/gpu_wheels.sh in .whl/ (the device tool carries them: carry=[".whl"]).
#   1. the GPU tests (pytest -m gpu): the CUDA-graph decode path's tokens equal the eager
#      loop's at temperature 0 (plain, steered, COCONUT), CUDA errors;
#   2. `workbench bench gpu` on the Qwen3.5-27B-shaped random model (bf16), JSON + table;
#   3. `workbench bench latent` on SmolLM2 on the GPU: latent-step cost and what latent.run
#      costs on top of the loop it drives (run_overhead, target <= 1.05), where a host sync
#      per row and step would show.
# Results go to $OUT (the device tool brings that folder back), else to
# workbench/bench/results/; commit the JSON there.
#   GPU_BENCH_ARGS="--batches 1 --new 16" bash scripts/gpu_check.sh   # a shorter bench
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/wb-site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/wb-site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
DEST=${OUT:-workbench/bench/results}
mkdir -p "$DEST"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, transformers, nnsight; print('torch', torch.__version__, 'transformers', transformers.__version__, 'nnsight', nnsight.__version__, 'cuda', torch.cuda.is_available())"
"$PY" -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tee "$DEST/gpu-tests.log"
name=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0).lower().replace(' ', '-'))")
# shellcheck disable=SC2086
"$PY" -c "import sys; from workbench.cli import main; sys.exit(main(sys.argv[1:]))" \
  bench gpu --model qwen3.5-27b-random --device cuda --dtype bfloat16 ${GPU_BENCH_ARGS:-} \
  --out "$DEST/gpu-qwen3.5-27b-random-$name.json" 2>&1 | tee "$DEST/gpu-bench.log"
"$PY" -c "import sys; from workbench.cli import main; sys.exit(main(sys.argv[1:]))" \
  bench latent --methods coconut,latent_head --device cuda --repeats 5 \
  --out "$DEST/latent-smollm2-$name.json" 2>&1 | tee "$DEST/latent-bench.log"
