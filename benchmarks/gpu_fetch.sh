#!/usr/bin/env bash
# Run here (with network) before benchmarks/gpu_check.sh: the GPU machine reaches no package registry, so the
# pure-Python packages it lacks travel as wheels in .whl/ (git-ignored; the device tool's `carry`), with
# mamba-ssm's source archive, which gpu_check.sh compiles there for that GPU only.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d .whl speechbrain==1.1.2 hyperpyyaml==1.2.3 "ruamel.yaml<0.19" \
    ruamel.yaml.clib soundfile pytest pluggy iniconfig
pip download --quiet --no-deps --no-binary=:all: -d .whl "mamba-ssm==2.3.2.post1"
ls -l .whl
