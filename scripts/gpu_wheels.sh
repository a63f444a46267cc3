#!/usr/bin/env bash
# Wheels for `make gpu-check` on a GPU machine that has torch and transformers but no registry:
# DeepSpeed (built here from its sdist with its ops off: pure Python, no JIT build needed by the
# check) and what tandem's config and DeepSpeed import that such a machine may lack. Python 3.12,
# manylinux x86-64, into .whl/ (ignored by git). Versions are those this repo's .venv resolved.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "gpu_wheels.sh: run 'make test' or 'bash scripts/install.sh' first (needs .venv)" >&2; exit 2; }
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf .whl && mkdir -p .whl
DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w .whl "deepspeed==$(version deepspeed)"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "pydantic==$(version pydantic)" "pydantic-core==$(version pydantic-core)" \
  "annotated-types==$(version annotated-types)" "typing-inspection==$(version typing-inspection)" \
  "hjson==$(version hjson)"
ls -la .whl
