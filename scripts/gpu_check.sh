#!/usr/bin/env bash
# The GPU path's device check, run once by a session that is lent a CUDA GPU (one `run` call, < 8 min):
#   1. the Triton kernel against the CPU reference on random shapes, and DCTLSA x2 latency at
#      256x256: FP32 eager, FP16 torch.compile, the low-bit runtime at W4A4/W3A3/W2A2 eager and
#      fast, medians, ratios, peak memory (scripts/bench_gpu.py);
#   2. `harmoq-build calibrate --device cuda` of DCTLSA x2 W3A3 (HarmoQ, default budget), timed.
# It writes docs/results/gpu.md and gpu.json (with the device's name) and copies them, with the
# logs, to $OUT.
#
# The device machine has torch, triton, onnx, onnxruntime, scikit-image, safetensors, einops,
# click and rich, but not spandrel or onnx-graphsurgeon, and not ../shared (only the checkout
# travels). So, once, on the CPU machine, in the repository root:
#     bash scripts/gpu_check.sh --prepare
# which git-ignores .whl/ and .gpu/ (.git/info/exclude), downloads those two pure-Python wheels
# (the versions in requirements/cpu.lock) into .whl/, and links .gpu/shared -> ../shared. Then the
# device call is
#     run(command="bash scripts/gpu_check.sh", timeout_s=540,
#         carry=[".whl", ".gpu/shared/weights/DCTLSA_X2.pt", ".gpu/shared/data/calib/DIV2K_valid_crop256"])
# (the weights and the 100 calibration crops travel through the link, about 17 MB, never committed).
# Commit docs/results/gpu.md and gpu.json from the files that come back.
#
# On the CPU machine, `bash scripts/gpu_check.sh --dry-run` runs the same steps small (the kernel
# in Triton's interpreter, no compilation, a 1-iteration calibration) into a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-device}
lock_version() { grep -i "^$1==" requirements/cpu.lock | cut -d= -f3; }

if [ "$mode" = "--prepare" ]; then
    mkdir -p .git/info .whl .gpu
    for path in /.whl/ /.gpu/; do grep -qxF "$path" .git/info/exclude 2>/dev/null || echo "$path" >> .git/info/exclude; done
    ln -sfn "$(cd .. && pwd)/shared" .gpu/shared
    for package in spandrel onnx_graphsurgeon; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
            "$package==$(lock_version "$package")"
    done
    ls -l .whl .gpu/shared/weights/DCTLSA_X2.pt
    exit 0
fi

python=$(command -v python3)
if [ "$mode" = "--dry-run" ]; then
    python=$PWD/.venv/bin/python
    results=$(mktemp -d)
    export TRITON_INTERPRET=1 HARMOQ_SHARED=${HARMOQ_SHARED:-$(cd .. && pwd)/shared}
    bench=(--dry-run --size 64x64 --tile 32 --warmup 0 --repeats 1 --bits 3 --results "$results")
    limit=900
    calibrate=(--device cpu --iters 1 --crops 2 --patch 32)
    out=$results
else
    [ -n "${OUT:-}" ] || { echo "error: run this on the device machine (\$OUT unset), or pass --dry-run" >&2; exit 2; }
    [ -d .whl ] && [ -e .gpu/shared/weights/DCTLSA_X2.pt ] || {
        echo "error: .whl/ or .gpu/shared/ did not travel: run --prepare here and name them in carry" >&2; exit 2; }
    $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site HARMOQ_SHARED=$PWD/.gpu/shared
    results=$PWD/docs/results
    bench=(--size 256x256 --warmup 10 --repeats 50 --results "$results")
    limit=270
    calibrate=(--device cuda)
    out=$OUT
    nvidia-smi -L
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

set -o pipefail
$python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
(cd scripts && timeout $limit "$python" bench_gpu.py "${bench[@]}") 2>&1 | tee "$out/bench_gpu.log" \
    || echo "bench_gpu.py failed or was cut at $limit s (exit $?); see bench_gpu.log"

start=$(date +%s%N)
status=completed
timeout 180 "$python" -c "import sys; from harmoq_deploy.cli import main; sys.exit(main(sys.argv[1:]))" \
    calibrate --model "$HARMOQ_SHARED/weights/DCTLSA_X2.pt" --bits 3 --method harmoq --target tensorrt \
    --calib "$HARMOQ_SHARED/data/calib/DIV2K_valid_crop256" "${calibrate[@]}" -o "$(mktemp -d)/artifact" \
    2>&1 | tee "$out/calibrate.log" || status="failed or cut at 180 s (exit $?), see calibrate.log"
milliseconds=$(( ($(date +%s%N) - start) / 1000000 ))
seconds=$(( milliseconds / 1000 )).$(printf %03d $(( milliseconds % 1000 )))
if [ -f "$results/gpu.json" ]; then
    (cd scripts && "$python" bench_gpu.py --results "$results" --append-calibration "$seconds" "$status")
    [ "$mode" = "--dry-run" ] || cp "$results/gpu.md" "$results/gpu.json" "$out/"
    cat "$results/gpu.md"
fi
