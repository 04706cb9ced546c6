#!/usr/bin/env bash
# The GPU check: one short script (under 8 minutes) for a fresh NVIDIA machine that has this repository's working
# tree but no virtual environment. From the repository root:
#
#   bash bench/gpu_check.sh                 # outputs in $OUT (the device tool's), else ./gpu-check-out
#
# 1. nvidia-smi, CPU and Python facts;
# 2. installs what the server and the tests need, the versions of clip-filter-backend/requirements.lock:
#    - with a wheelhouse in .whl/ (bench/gpu_wheels.sh fills it on a connected machine; carry it along), offline,
#      into /tmp/clip-filter-site, on top of the machine's own CUDA torch/torchvision/numpy;
#    - without one, from PyPI into a fresh venv, torch and torchvision included (PyPI's default torch wheels are
#      CUDA builds);
# 3. the GPU unit tests (tests/unit/test_gpu_cuda.py, plus the device-agnostic test_gpu_path.py and the batcher);
# 4. bench/bench.py --device cuda --gpu-only: fp16 images/s at batch 256, best match and 16 clients with CPU and
#    with GPU JPEG decoding, one line each as measured;
# 5. the pipeline ceiling (bench/bench.py --ceiling-only --quick); one server against four replicas on the GPU
#    (bench/replicas_ab.py: past one process's GIL) if over ~3 minutes are left; then the whole table
#    (--device cuda --quick) in whatever time is left.
# Every step has its own time limit, so a slow step costs only itself; the log is in $OUT/gpu_check.log.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu-check-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-470}  # the whole script, in seconds
step() { echo; echo "== $* (at $(( $(date +%s) - START )) s)"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

step "machine"
nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt"
lscpu | grep -i "model name" || true
echo "cores: $(nproc)"

step "install"
PY=${PYTHON:-python3}
LOCK=clip-filter-backend/requirements.lock
NEEDED="annotated-doc annotated-types anyio certifi charset-normalizer click Deprecated fastapi filelock fsspec ftfy
h11 httpcore httpcore2 httptools httpx httpx2 huggingface_hub idna iniconfig limits open_clip_torch opentelemetry-api packaging
pillow pillow_heif pluggy prometheus_client pybase64 pydantic pydantic-settings pydantic_core Pygments pytest python-dotenv
python-multipart PyYAML regex requests safetensors sniffio starlette timm tqdm truststore typing-inspection
typing_extensions urllib3 uvicorn uvloop wcwidth wrapt"
if compgen -G ".whl/*.whl" >/dev/null; then
    echo "offline: wheels from .whl/, torch/torchvision/numpy from the machine"
    timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/clip-filter-site .whl/*.whl || echo "!! installing the wheelhouse failed"
    export PYTHONPATH=/tmp/clip-filter-site:$ROOT/clip-filter-backend
else
    echo "online: a venv with the lock's versions from PyPI"
    "$PY" -m venv /tmp/clip-filter-venv && PY=/tmp/clip-filter-venv/bin/python
    timeout 300 "$PY" -m pip install -q -c "$LOCK" torch torchvision numpy $NEEDED || echo "!! pip install failed"
    export PYTHONPATH=$ROOT/clip-filter-backend
fi
"$PY" - <<'EOF'
import sys, torch, torchvision, PIL, open_clip
print("python", sys.version.split()[0], "torch", torch.__version__, "torchvision", torchvision.__version__,
      "pillow", PIL.__version__, "open_clip", open_clip.__version__)
print("cuda available:", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF

step "GPU unit tests"
(cd clip-filter-backend && timeout 240 "$PY" -m pytest -q -p no:cacheprovider -rs -s \
    tests/unit/test_gpu_cuda.py tests/unit/test_gpu_path.py tests/unit/test_batcher.py) 2>&1 | tee "$OUT/pytest.txt"

step "bench --gpu-only"
timeout $(( $(left) > 60 ? 180 : 30 )) "$PY" bench/bench.py --device cuda --gpu-only --latency-requests 20 \
    --requests-per-client 8 2>&1 | grep -v "No pretrained weights" | tee "$OUT/bench_gpu.txt"

step "pipeline ceiling"
timeout $(( $(left) > 150 ? 150 : 10 )) "$PY" bench/bench.py --ceiling-only --quick 2>&1 | tee "$OUT/ceiling.txt"

step "replicas on the one GPU: 1 server vs 4 (bench/replicas_ab.py), when time is left ($(left) s)"
if [ "$(left)" -gt 170 ]; then
    timeout 110 "$PY" bench/replicas_ab.py --device cuda --clients 64 --rounds 2 --layout 1,CLIP_TORCH_THREADS=1 \
        --layout 4,CLIP_TORCH_THREADS=1 2>&1 | grep -v "No pretrained weights" | tee "$OUT/replicas.txt"
fi

step "whole table, --quick, in the time left ($(left) s)"
if [ "$(left)" -gt 60 ]; then
    timeout $(( $(left) - 10 )) "$PY" bench/bench.py --device cuda --quick --no-ceiling 2>&1 \
        | grep -v "No pretrained weights" | tee "$OUT/bench_table.txt"
fi
step "done"
