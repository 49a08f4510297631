#!/usr/bin/env bash
# The GPU check, in one go (<= 8 minutes on an H100/H200-class machine): install what the machine lacks from
# wheels carried in .whl/ (it has no network: fetch them beforehand with `benchmarks/gpu.sh --fetch-wheels`
# where pip works), install volseg itself with --no-deps, run the tests marked gpu, then predict a
# 64 x 4096 x 4096 synthetic stack and write benchmarks/results/gpu.json (or $OUT/gpu.json).
#   benchmarks/gpu.sh                  on the GPU machine
#   benchmarks/gpu.sh --cpu-check      the same steps at a tiny size on a CPU (the gpu tests skip): CI-sized
#   benchmarks/gpu.sh --fetch-wheels   download the wheels into .whl/ (ignored by git, carried to the machine)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# What a bare GPU machine lacks (it has CUDA torch, numpy, scipy, scikit-image and tifffile).
WHEELS="zarr numcodecs donfig crc32c google-crc32c typing-extensions packaging dask distributed cloudpickle fsspec
partd locket toolz pyyaml click msgpack psutil sortedcontainers tblib tornado urllib3 zict jinja2 markupsafe
typer rich shellingham markdown-it-py mdurl pygments annotated-doc pillow matplotlib contourpy cycler fonttools
kiwisolver pyparsing python-dateutil six importlib-metadata zipp"

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  mkdir -p .whl
  for name in $WHEELS; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .whl "$name" || echo "gpu.sh: no wheel for $name" >&2
  done
  exit 0
fi

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# volseg itself, without touching the machine's torch; where pip cannot build here, the source tree serves.
"$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>/dev/null || export PYTHONPATH=$PWD:${PYTHONPATH:-}
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"

if [[ "${1:-}" == "--cpu-check" ]]; then
  "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py || [[ $? == 5 ]]  # 5: all skipped, no CUDA
  "$PY" benchmarks/gpu.py --shape 2,256,256 --device cpu --out "$RESULTS/gpu-cpu-check.json"
  exit 0
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu.sh: no CUDA device here')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
"$PY" benchmarks/gpu.py --shape 64,4096,4096 --device cuda --out "$RESULTS/gpu.json" --work "${TMPDIR:-/tmp}"
