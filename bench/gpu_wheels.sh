#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels bench/gpu_check.sh needs on a GPU machine that cannot reach PyPI.
#
#   bash bench/gpu_wheels.sh            # run on a connected machine, from the repository root
#
# The exact versions come from clip-filter-backend/requirements.lock; only the server's and the GPU tests'
# pure-Python or small packages are fetched (about 30 MB, for CPython 3.12 on x86-64 Linux). torch, torchvision,
# triton, the nvidia-* CUDA libraries and numpy are NOT fetched (about 3 GB): gpu_check.sh uses the GPU
# machine's own CUDA build of them when it cannot install the lock's from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=clip-filter-backend/requirements.lock
PYTHON=${PYTHON:-python3}
WANTED="annotated-doc annotated-types anyio certifi charset-normalizer click Deprecated fastapi filelock fsspec ftfy
h11 httpcore httpcore2 httptools httpx httpx2 huggingface_hub idna iniconfig limits open_clip_torch opentelemetry-api packaging
pillow pillow_heif pluggy prometheus_client pybase64 pydantic pydantic-settings pydantic_core Pygments pytest python-dotenv
python-multipart PyYAML regex requests safetensors sniffio starlette timm tqdm truststore typing-inspection
typing_extensions urllib3 uvicorn uvloop wcwidth wrapt"
mkdir -p .whl  # ignored by .gitignore; name it in the device call's carry
pins=()
for name in $WANTED; do
    pin=$(grep -i "^${name}==" "$LOCK" || true)
    [ -n "$pin" ] || { echo "not in $LOCK: $name" >&2; exit 1; }
    pins+=("$pin")
done
$PYTHON -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "${pins[@]}"
du -sh .whl
