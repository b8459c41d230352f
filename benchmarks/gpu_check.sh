#!/usr/bin/env bash
# The GPU measurements and CUDA tests of speechbrain_ext, in one call, on any machine with a CUDA GPU and
# a Python environment that has torch with CUDA. Run it from anywhere; it works in this checkout.
#
#   1. Installs what it needs (skipped with --no-install): the project's dependencies and pytest
#      (`pip install -e ".[plot]" pytest`, torch kept at its installed version), and mamba-ssm, the `[mamba]`
#      extra, unless `import mamba_ssm` already works. mamba-ssm is compiled from its source archive (with the
#      CUDA toolkit's nvcc) for this GPU's architecture only (its setup.py lists nine: minutes instead of
#      tens), in the background while step 2 runs. Without it, Mamba runs on this package's own scan.
#   2. Runs the tests that need CUDA (tests/test_cuda.py): every mixer trained under bf16 autocast, the
#      SDPA attention against the CPU, a bench point; once mamba-ssm is built, again with its kernels
#      (mamba-ssm's selective scan against ours, forward and backward, on padded batches).
#   3. Runs the speed and memory bench (python -m speechbrain_ext.bench), each sweep into its own folder:
#        figure1_paper       --protocol paper: the paper's Figure 1 as its memory_test_v2.py measured it (base
#                            and large models of the paper's five mixers, training mode, autograd on, fp16
#                            autocast, batch 6, 10 to 80 s, 10 warm-up rounds then the mean of 10 calls)
#        base_infer          --protocol inference: base models, eval mode, inference_mode, fp16 autocast,
#                            batch 6, 10 to 80 s, our mixers beside SpeechBrain's own Conformer attention types
#        base_train          base models, training step (forward + backward), 20 and 80 s
#        base_infer_600s     base models, inference on 10-minute inputs (linear mixers, mhsa_flash, stock RoPEMHA)
#        large_infer         large models, inference, 10 and 80 s
#        large_train         large models, training step, 80 s
#      then report.md: python -m speechbrain_ext.bench.report on base_train and base_infer.
#
# Everything goes under OUT: gpu_check.log (what ran, when), environment.txt (GPU, driver, versions, commit,
# whether mamba-ssm's kernels were used), pytest_*.txt, mamba_build.log, one folder per sweep (results.csv,
# results.json, results.png; figure1_paper: results.csv, runs.csv, results.json, figure1.png), report.md,
# skipped_sweeps.txt. Nothing is written elsewhere but the installed
# packages and a temporary build folder, removed at the end.
#
#   bash benchmarks/gpu_check.sh OUT                 # install from PyPI, then test and measure
#   bash benchmarks/gpu_check.sh OUT --no-install    # the environment is ready (mamba-ssm or not)
#   bash benchmarks/gpu_check.sh --fetch DIR         # on a machine with network: download into DIR what a
#                                                    # machine without network needs (wheels, mamba-ssm source)
#   bash benchmarks/gpu_check.sh OUT --wheels DIR    # no network: install from DIR (into a temporary folder
#                                                    # on PYTHONPATH); torch, einops, transformers must be there
#   bash benchmarks/gpu_check.sh OUT --dry-run       # on a CPU, the plumbing only: no install, CUDA tests
#                                                    # skipped, every sweep shrunk to a tiny CPU run
#
# Environment: PYTHON (default python3); GPU_CHECK_BUDGET_S (sweeps that would start after this many seconds
# are skipped and listed; default none); MAX_JOBS (parallel compile jobs of mamba-ssm, default 12);
# MAMBA_SSM_VERSION (default 2.3.2.post1); WHEELS_PYTHON (the Python version --fetch downloads for, default 3.12).
set -uo pipefail
absolute() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }  # paths as given, from the caller's folder
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
mamba_version=${MAMBA_SSM_VERSION:-2.3.2.post1}
usage="usage: benchmarks/gpu_check.sh OUT [--no-install | --wheels DIR | --dry-run] | --fetch DIR"
fail_usage() { echo "$usage" >&2; exit 2; }

download_mamba_sdist() {  # DIR: mamba-ssm's source archive into DIR
    # To describe itself, mamba-ssm's setup.py imports torch, packaging and wheel: it runs in this
    # environment (no build isolation), wheel added from a temporary folder where it is missing.
    local helpers
    helpers=$(mktemp -d)
    $python -c "import wheel" 2>/dev/null || $python -m pip install --quiet --target "$helpers" wheel
    PYTHONPATH="$helpers${PYTHONPATH:+:$PYTHONPATH}" MAMBA_SKIP_CUDA_BUILD=TRUE $python -m pip download --quiet \
        --no-build-isolation --no-deps --no-binary=:all: -d "$1" "mamba-ssm==$mamba_version"
    local status=$?
    rm -rf "$helpers"
    return $status
}

if [ "${1:-}" = "--fetch" ]; then
    [ -n "${2:-}" ] || fail_usage
    dir=$(absolute "$2")
    mkdir -p "$dir"
    set -e
    $python -m pip download --quiet --no-deps --only-binary=:all: --python-version "${WHEELS_PYTHON:-3.12}" \
        --implementation cp --platform manylinux_2_28_x86_64 -d "$dir" speechbrain==1.1.2 hyperpyyaml==1.2.3 \
        "ruamel.yaml<0.19" ruamel.yaml.clib soundfile pytest pluggy iniconfig
    download_mamba_sdist "$dir"
    ls -l "$dir"
    exit 0
fi

[ -n "${1:-}" ] || fail_usage
out=$(absolute "$1")
install=pypi
wheels=""
case "${2:-}" in
    "") ;;
    --no-install) install=none ;;
    --dry-run) install=none ;;
    --wheels) install=wheels; [ -n "${3:-}" ] || fail_usage; wheels=$(absolute "$3") ;;
    *) fail_usage ;;
esac
dry_run=false
[ "${2:-}" = "--dry-run" ] && dry_run=true
budget_s=${GPU_CHECK_BUDGET_S:-}
mkdir -p "$out"
cd "$here"
log="$out/gpu_check.log"
: > "$log"
start=$(date +%s)
say() { echo "[$(( $(date +%s) - start )) s] $*" | tee -a "$log"; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! $python -c "import torch" >> "$log" 2>&1; then
    say "$python cannot import torch: run this from a Python environment with torch (built for CUDA), or set PYTHON"
    exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mamba_importable() { $python -c "import mamba_ssm.ops.selective_scan_interface" >/dev/null 2>&1; }

build_pid=""
build_mamba() {  # SDIST: compile it for this GPU only, in the background, into $work/wheel
    local sdist=$1 arch
    arch=$($python -c "import torch; major, minor = torch.cuda.get_device_capability(); print(f'{major}{minor}')")
    say "building $(basename "$sdist") for sm_$arch only, in the background (mamba_build.log)"
    mkdir -p "$work/src" "$work/wheel" && tar xzf "$sdist" -C "$work/src"
    local src
    src=$(ls -d "$work"/src/mamba_ssm-*/ | head -1)
    # Its setup.py hard-codes many architectures: every one becomes this GPU's.
    $python - "$src/setup.py" "$arch" <<'PY'
import re, sys
path, arch = sys.argv[1], sys.argv[2]
text = open(path).read()
open(path, "w").write(re.sub(r"arch=compute_\d+a?,code=sm_\d+a?", f"arch=compute_{arch},code=sm_{arch}", text))
PY
    (cd "$src" && MAMBA_FORCE_BUILD=TRUE MAX_JOBS=${MAX_JOBS:-12} setsid $python -m pip wheel \
        --no-build-isolation --no-deps -w "$work/wheel" . > "$out/mamba_build.log" 2>&1) &
    build_pid=$!
}

case $install in
    pypi)
        # torch pinned to the installed version, so that pip picks the torchaudio that matches it.
        torch_version=$($python -c "import torch; print(torch.__version__.split('+')[0])")
        say "installing the project's dependencies and pytest (pip install -e \".[plot]\" pytest torch==$torch_version)"
        $python -m pip install --quiet -e ".[plot]" pytest "torch==$torch_version" packaging ninja wheel setuptools \
            >> "$log" 2>&1 || say "pip install failed: see gpu_check.log"
        if mamba_importable; then
            say "mamba-ssm is installed"
        else
            if download_mamba_sdist "$work" >> "$log" 2>&1; then
                build_mamba "$(ls "$work"/mamba_ssm-*.tar.gz | head -1)"
            else
                say "could not download mamba-ssm $mamba_version (see gpu_check.log): Mamba runs on our scan"
            fi
        fi
        ;;
    wheels)
        say "installing the wheels of $wheels into a temporary folder on PYTHONPATH"
        $python -m pip install --quiet --no-index --no-deps --target "$work/site" "$wheels"/*.whl >> "$log" 2>&1 \
            || say "installing the wheels failed: see gpu_check.log"
        export PYTHONPATH="$work/site:$PYTHONPATH"
        sdist=$(ls "$wheels"/mamba_ssm-*.tar.gz 2>/dev/null | head -1)
        if mamba_importable; then
            say "mamba-ssm is installed"
        elif [ -n "$sdist" ]; then
            build_mamba "$sdist"
        else
            say "no mamba-ssm source archive in $wheels: Mamba runs on our scan"
        fi
        ;;
esac

{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    $python -c "import torch, speechbrain; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'speechbrain', speechbrain.__version__, 'gpu', torch.cuda.is_available())"
} > "$out/environment.txt" 2>&1
cat "$out/environment.txt" >> "$log"

run_cuda_tests() {  # NAME: tests/test_cuda.py into OUT/pytest_NAME.txt
    timeout 900 $python -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$out/pytest_$1.txt" 2>&1
    say "CUDA tests ($1): $(tail -1 "$out/pytest_$1.txt")"
}

if [ -n "$build_pid" ]; then
    run_cuda_tests cuda_our_scan  # Mamba on our scan while mamba-ssm compiles
    say "waiting for the mamba-ssm build"
    wait "$build_pid"
    wheel=$(ls "$work"/wheel/mamba_ssm-*.whl 2>/dev/null | head -1)
    if [ -z "$wheel" ]; then
        say "mamba-ssm build failed: see mamba_build.log; Mamba runs on our scan"
    elif [ "$install" = wheels ]; then
        $python -m pip install --quiet --no-index --no-deps --target "$work/site" "$wheel" >> "$log" 2>&1
        say "mamba-ssm installed from $(basename "$wheel")"
    else
        $python -m pip install --quiet "$wheel" >> "$log" 2>&1
        say "mamba-ssm installed from $(basename "$wheel")"
    fi
fi
$python -c "from speechbrain_ext.mixers.mamba import cuda_selective_scan as f; \
print('mamba_ssm kernels:', 'yes' if f() else 'no (our scan)')" >> "$out/environment.txt" 2>&1
run_cuda_tests cuda

skipped=()
run_bench() {  # NAME ARGS... (the GPU sweep) -- DRY_RUN_ARGS...: one bench run into OUT/NAME
    local name=$1 args=() tiny=()
    shift
    while [ "$1" != "--" ]; do args+=("$1"); shift; done
    shift
    tiny=("$@")
    if [ -n "$budget_s" ] && [ $(( $(date +%s) - start )) -gt "$budget_s" ]; then
        skipped+=("$name")
        say "skipped sweep $name: past the ${budget_s} s budget"
        return
    fi
    say "sweep $name: python -m speechbrain_ext.bench ${args[*]}"
    if $dry_run; then  # the same sweep's plumbing, shrunk to a tiny CPU run
        args=("${tiny[@]}")
        say "dry run of $name: python -m speechbrain_ext.bench ${args[*]}"
    fi
    $python -m speechbrain_ext.bench "${args[@]}" --output "$out/$name" >> "$log" 2>&1 \
        || say "sweep $name exited with status $?"
}
sweep() {  # NAME SIZE MODE "MIXERS" "SECONDS": --protocol inference; a dry run: one point of its first mixer
    local name=$1 size=$2 mode=$3 mixers=$4 seconds=$5
    run_bench "$name" --protocol inference --size "$size" --mode "$mode" --mixers $mixers --seconds $seconds -- \
        --protocol inference --size "$size" --mode "$mode" --mixers ${mixers%% *} --seconds 1 --layers 1 \
        --d-model 32 --batch 1 --warmup 0 --repeats 1 --device cpu --dtype float32
}
paper_sweep() {  # NAME "SIZES" "MIXERS": --protocol paper with its own defaults (memory_test_v2.py's);
    # a dry run: its first mixer at each size, 1 s, one warm-up round and two calls
    local name=$1 sizes=$2 mixers=$3
    run_bench "$name" --protocol paper --size $sizes --mixers $mixers -- \
        --protocol paper --size $sizes --mixers ${mixers%% *} --seconds 1 --layers 1 --d-model 32 --batch 1 \
        --warmup-rounds 1 --calls 2 --device cpu --dtype float32
}

paper="mhsa hypermixing fastformer summarymixing mamba"
ours="$paper mhsa_flash"
linear="hypermixing fastformer summarymixing mamba"
stock="sb_RelPosMHAXL sb_regularMHA sb_RoPEMHA sb_hypermixing"
# Figure 1 as the paper measured it (memory_test_v2.py: train mode, autograd, fp16, batch 6, 10-80 s, mean of 10).
paper_sweep figure1_paper "base large" "$paper"
# The same lengths, batch and precision under the inference protocol (eval, inference_mode, median).
sweep base_infer base infer "$ours $stock" "10 20 30 40 50 60 70 80"
sweep base_train base train "$ours $stock" "20 80"
sweep base_infer_600s base infer "$linear mhsa_flash sb_RoPEMHA" 600
sweep large_infer large infer "$ours sb_RelPosMHAXL sb_hypermixing" "10 80"
sweep large_train large train "$ours sb_RelPosMHAXL sb_hypermixing" 80

if $dry_run; then
    say "report: not made in a dry run (its sweeps hold one point each)"
elif [ -f "$out/base_train/results.csv" ] && [ -f "$out/base_infer/results.csv" ]; then
    $python -m speechbrain_ext.bench.report --train "$out/base_train" --infer "$out/base_infer" \
        --output "$out/report.md" >> "$log" 2>&1 && say "report: report.md" || say "report failed: see gpu_check.log"
fi
printf '%s\n' "${skipped[@]}" > "$out/skipped_sweeps.txt"
say "done in $(( $(date +%s) - start )) s; ${#skipped[@]} sweep(s) skipped"
