#!/usr/bin/env bash
# The CUDA path on a machine with an NVIDIA GPU, in one run:
#   bash scripts/gpu_check.sh 2>&1 | tee gpu_check.log
# 1. the GPU and the torch that sees it; 2. the CUDA tests (test_cuda.py, test_warp.py);
# 3. davss bench on CUDA at 512x1024 and 1024x2048, torch eager and (when onnxruntime has
# the CUDA provider) an ONNX key segmenter; 4. the node at 1280x720 on CUDA when rclpy is
# importable. Python: $PYTHON, else .venv/bin/python when its torch sees a GPU, else
# python3 (a machine's own CUDA torch); the package is used from this checkout.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch,sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
        PYTHON=.venv/bin/python
    else
        PYTHON=python3
    fi
fi
OUT_DIR="${OUT:-out/gpu_check}"
mkdir -p "$OUT_DIR"
status=0
step() { echo; echo "== $*"; }

step "GPU and torch ($PYTHON)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || status=1
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" || exit 1
"$PYTHON" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" || true

step "CUDA tests"
"$PYTHON" -m pytest -q -rs test/test_cuda.py test/test_warp.py || status=1

step "export an ONNX key segmenter of the shipped model at each size"
for size in 512x1024 1024x2048; do
    h=${size%x*}; w=${size#*x}
    "$PYTHON" -m davss_ros.cli export --checkpoint davss_ros/weights/davss_cpu.pt \
        --onnx "$OUT_DIR/seg_$size.onnx" --height "$h" --width "$w" || status=1
done

step "davss bench on CUDA"
for size in 512x1024 1024x2048; do
    keys=()
    [ -f "$OUT_DIR/seg_$size.onnx" ] && keys=(--key-segmenter "$OUT_DIR/seg_$size.onnx")
    "$PYTHON" -m davss_ros.cli bench --device cuda --checkpoint davss_ros/weights/davss_cpu.pt \
        --sizes "$size" --frames 40 "${keys[@]}" --json "$OUT_DIR/bench_$size.json" || status=1
done

step "the node at 1280x720 on CUDA"
if "$PYTHON" -c "import rclpy, davss_msgs" 2>/dev/null; then
    "$PYTHON" -m davss_ros.cli bench --node --camera 1280x720 --device cuda \
        --json "$OUT_DIR/node_1280x720.json" || status=1
else
    echo "skipped: rclpy / davss_msgs are not importable by $PYTHON (make setup builds them "
    echo "into .venv, whose CPU torch cannot run this check)"
fi
exit $status
