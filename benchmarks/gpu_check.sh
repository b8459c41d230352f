#!/usr/bin/env bash
# The whole GPU check in one call, for the lent GPU machine (no package registry there), within ~9 minutes:
#   1. installs the pure-Python wheels carried in .whl/ and starts building mamba-ssm for this GPU only
#      (in the background: ~3 minutes on an H100/H200);
#   2. runs the tests that need CUDA (tests/test_cuda.py: every mixer under bf16 autocast, the SDPA path,
#      a bench point), then, once mamba-ssm is built, again with its kernels (kernel vs our scan, forward
#      and backward, with padding);
#   3. runs the bench's GPU sweeps (base and large, 10-80 s and 600 s, inference and training step, with
#      SpeechBrain's stock attention types in the same runs), each in its own folder.
# Everything goes under OUT (gpu_check.log, environment.txt, pytest_*.txt, one folder per sweep).
#
#   here, with network:  bash benchmarks/gpu_fetch.sh              # fills .whl/ (wheels + mamba-ssm sdist)
#   on the GPU machine:  bash benchmarks/gpu_check.sh "$OUT"       # device tool, carry: [".whl"]
#   on a CPU, to test the plumbing:  bash benchmarks/gpu_check.sh OUT --dry-run
#                        (no install, no build, CUDA tests skipped, each sweep shrunk to one tiny point)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/gpu_check.sh OUT [--dry-run]}
dry_run=false
[ "${2:-}" = "--dry-run" ] && dry_run=true
budget_s=${GPU_CHECK_BUDGET_S:-510}  # sweeps that would start after this are skipped (and listed)
python=${PYTHON:-python3}
mkdir -p "$out"
out=$(cd "$out" && pwd)
log="$out/gpu_check.log"
start=$(date +%s)
say() { echo "[$(( $(date +%s) - start )) s] $*" | tee -a "$log"; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

build_pid=""
if ! $dry_run; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        say "installing the carried wheels into .site"
        $python -m pip install --quiet --no-index --no-deps --target .site .whl/*.whl >> "$log" 2>&1
        export PYTHONPATH="$PWD/.site:$PYTHONPATH"
    fi
    sdist=$(ls .whl/mamba_ssm-*.tar.gz 2>/dev/null | head -1)
    if [ -n "$sdist" ]; then
        arch=$($python -c "import torch; major, minor = torch.cuda.get_device_capability(); print(f'{major}{minor}')")
        say "building $(basename "$sdist") for sm_$arch only, in the background"
        rm -rf .build && mkdir -p .build/wheel && tar xzf "$sdist" -C .build
        src=$(ls -d .build/mamba_ssm-*/ | head -1)
        # Its setup.py hard-codes many architectures: every one becomes this GPU's (minutes instead of tens).
        $python - "$src/setup.py" "$arch" <<'PY'
import re, sys
path, arch = sys.argv[1], sys.argv[2]
text = open(path).read()
open(path, "w").write(re.sub(r"arch=compute_\d+a?,code=sm_\d+a?", f"arch=compute_{arch},code=sm_{arch}", text))
PY
        (cd "$src" && MAMBA_FORCE_BUILD=TRUE MAX_JOBS=${MAX_JOBS:-12} setsid $python -m pip wheel \
            --no-build-isolation --no-deps -w "$PWD/../wheel" . > "$out/mamba_build.log" 2>&1) &
        build_pid=$!
    else
        say "no mamba-ssm sdist in .whl/: Mamba runs on our scan (run benchmarks/gpu_fetch.sh first)"
    fi
fi

{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    $python -c "import torch, speechbrain; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'speechbrain', speechbrain.__version__, 'gpu', torch.cuda.is_available())"
} > "$out/environment.txt" 2>&1
cat "$out/environment.txt" >> "$log"

run_cuda_tests() {  # $1: name of the report
    if $dry_run; then
        $python -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$out/pytest_$1.txt" 2>&1
    else
        timeout 240 $python -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$out/pytest_$1.txt" 2>&1
    fi
    say "CUDA tests ($1): $(tail -1 "$out/pytest_$1.txt")"
}

skipped=()
sweep() {  # NAME SIZE MODE "MIXERS" "SECONDS": one bench run into OUT/NAME
    local name=$1 size=$2 mode=$3 mixers=$4 seconds=$5
    if [ $(( $(date +%s) - start )) -gt "$budget_s" ]; then
        skipped+=("$name")
        say "skipped sweep $name: past the ${budget_s} s budget"
        return
    fi
    local args=(--size "$size" --mode "$mode" --mixers $mixers --seconds $seconds)
    if $dry_run; then  # the same sweep's plumbing: one tiny CPU point of its first mixer
        args=(--size "$size" --mode "$mode" --mixers ${mixers%% *} --seconds 1 --layers 1
              --d-model 32 --batch 1 --warmup 0 --repeats 1 --device cpu --dtype float32)
    fi
    say "sweep $name: python -m speechbrain_ext.bench ${args[*]}"
    timeout 300 $python -m speechbrain_ext.bench "${args[@]}" --output "$out/$name" >> "$log" 2>&1 \
        || say "sweep $name exited with status $?"
}

run_cuda_tests without_mamba_kernels
linear="hypermixing fastformer summarymixing mhsa_flash"
stock="sb_RelPosMHAXL sb_regularMHA sb_RoPEMHA sb_hypermixing"
sweep base_infer_10-80s base infer "mhsa $linear $stock" "10 20 40 80"
sweep base_train_20-80s base train "mhsa $linear $stock" "20 80"

if [ -n "$build_pid" ]; then
    say "waiting for the mamba-ssm build"
    wait "$build_pid"
    wheel=$(ls .build/wheel/mamba_ssm-*.whl 2>/dev/null | head -1)
    if [ -n "$wheel" ]; then
        $python -m pip install --quiet --no-index --no-deps --target .site "$wheel" >> "$log" 2>&1
        say "mamba-ssm installed from $(basename "$wheel")"
    else
        say "mamba-ssm build failed: see mamba_build.log"
    fi
fi
$python -c "from speechbrain_ext.mixers.mamba import cuda_selective_scan as f; \
print('mamba_ssm kernels:', 'yes' if f() else 'no (our scan)')" >> "$out/environment.txt" 2>&1
$dry_run || run_cuda_tests with_mamba_kernels
sweep base_mamba_infer_10-80s base infer mamba "10 20 40 80"
sweep base_mamba_train_20-80s base train mamba "20 80"
sweep base_infer_600s base infer "$linear mamba sb_RoPEMHA" 600
sweep large_infer_10-80s large infer "mhsa $linear mamba sb_RelPosMHAXL sb_hypermixing" "10 80"
sweep large_train_80s large train "mhsa $linear mamba sb_RelPosMHAXL sb_hypermixing" 80

printf '%s\n' "${skipped[@]}" > "$out/skipped_sweeps.txt"
say "done in $(( $(date +%s) - start )) s; ${#skipped[@]} sweep(s) skipped"
