#!/usr/bin/env bash
# The GPU check of issue 16 (bench/gpu_check.py): set up, then run it; ≤ 8 minutes on one H200.
#
#   bench/gpu_check.sh [gpu_check.py options]   on the GPU machine (make gpu-check)
#   bench/gpu_check.sh --bundle                 beforehand, on a machine with the package registries
#                                               and the real CIFAR-100: writes build/gpu-bundle/
#
# Set-up, in this order:
#   1. the project's .venv, when it already has torch with CUDA, eed and FFCV;
#   2. build/gpu-bundle/ (carried to a machine that cannot reach any registry, like the lent
#      H200, whose image has torch, numba, OpenCV, rich, typer, pytest but not pydantic or FFCV):
#      the image's python3, the bundle's wheels installed into /tmp, FFCV and the libraries it
#      links from the bundle, and a balanced real CIFAR-100 subset (64 + 16 images per class,
#      $GPU_CHECK_PER_CLASS; the whole archive is too large to carry: at most 64 MiB travel);
#   3. otherwise `make setup` (apt packages, .venv, pinned torch), which needs the network.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
BUNDLE=build/gpu-bundle
export PYTHONUNBUFFERED=1

if [ "${1:-}" = "--bundle" ]; then
  shift
  make setup
  SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/wheels" "$BUNDLE/site" "$BUNDLE/lib" "$BUNDLE/data"
  # The packages eed and FFCV import that the GPU image lacks, at the versions of this .venv:
  # pydantic-core compiled for the image's CPython 3.12, the pure-Python ones copied as installed
  # (some, like fastargs, have no wheel on the index).
  core=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('pydantic-core'))")
  .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$BUNDLE/wheels" "pydantic-core==$core" 2> >(grep -v "^WARNING: Location" >&2)
  for module in pydantic annotated_types typing_inspection terminaltables fastargs assertpy; do
    cp -r "$SITE/$module" "$BUNDLE/site/" 2>/dev/null || cp "$SITE/$module.py" "$BUNDLE/site/"
    cp -r "$SITE/${module}"-*.dist-info "$BUNDLE/site/" 2>/dev/null || true
  done
  # FFCV has no wheel. Its C library is loaded with ctypes and uses only PyModule_Create2 of the
  # stable ABI, so the package built here also runs under 3.12 once its module has a 3.12 name;
  # the shared libraries it links (OpenCV, libjpeg-turbo and theirs) travel beside it.
  cp -r "$SITE"/ffcv "$SITE"/ffcv-*.dist-info "$BUNDLE/site/"
  rm -rf "$BUNDLE/site/ffcv/benchmarks" && find "$BUNDLE/site" -name __pycache__ -prune -exec rm -rf {} +
  built=$(ls "$BUNDLE"/site/ffcv/_libffcv.cpython-*.so | head -1)
  cp "$built" "$BUNDLE/site/ffcv/_libffcv.cpython-312-x86_64-linux-gnu.so"
  ldd "$built" | awk '/=> \// {print $3}' | grep -Ev '/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|ld-linux[^/]*)\.so' \
    | xargs -I{} cp -L {} "$BUNDLE/lib/"
  .venv/bin/python -c "
import sys; sys.path.insert(0, '.')
from bench import gpu_check
from bench.common import SHARED_DATA
import os
source = os.environ.get('EED_DATA_ROOT', str(SHARED_DATA))
per_class = tuple(int(v) for v in '${GPU_CHECK_PER_CLASS:-64,16}'.split(','))
print(gpu_check.write_subset_archive(gpu_check.Path(source), gpu_check.Path('$BUNDLE/data'), per_class))"
  du -sh "$BUNDLE"/* && echo "carry $BUNDLE to the GPU machine (device run: carry=[\"$BUNDLE\"]), then run bench/gpu_check.sh there"
  exit 0
fi

extra=()
if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch, eed, ffcv; assert torch.cuda.is_available()' 2>/dev/null; then
  PY=.venv/bin/python
elif [ -d "$BUNDLE/wheels" ]; then
  PY=python3
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-check-site \
    "$BUNDLE"/wheels/*.whl
  export PYTHONPATH="$REPO:/tmp/gpu-check-site:$REPO/$BUNDLE/site${PYTHONPATH:+:$PYTHONPATH}"
  export LD_LIBRARY_PATH="$REPO/$BUNDLE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export EED_TEST_CIFAR100="$REPO/$BUNDLE/data/cifar-100-python.tar.gz"
  # The bundle holds a few training images per class (64): all of them train (no validation split).
  extra=(--data-root "$BUNDLE/data" --set data.val_size=0)
else
  make setup
  PY=.venv/bin/python
fi
"$PY" -c 'import torch, eed, ffcv; print("gpu_check: torch", torch.__version__, "CUDA", torch.cuda.is_available(), torch.cuda.device_count(), "GPU(s)")'
exec "$PY" bench/gpu_check.py "${extra[@]}" "$@"
