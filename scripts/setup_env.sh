#!/usr/bin/env bash
# Create (or reuse) the Python 3.10 virtual environment this package runs in, and print its
# python on stdout (all other output goes to stderr):   PY=$(bash scripts/setup_env.sh)
#
#   PYTHON=/path/to/python3.10   use this interpreter to create the venv (default: python3.10 on PATH,
#                                pyenv's; else uv, installed from PyPI, downloads one)
#   --which-python               print the Python 3.10 the venv would be made from, and stop
#   DLRM_CUDA=1 / 0              the real CUDA libraries OneFlow links (1.3 GB) / stand-ins for them
#                                (default: real where nvidia-smi lists a GPU or no C compiler exists)
#   DLRM_VENV=/path/to/venv      where the venv lives (default: ~/.cache/oneflow-dlrm/venv-py310,
#                                outside the checkout so fresh clones and CI reuse it)
# Re-running with unchanged requirements takes about a second. The `dlrm` package (this checkout)
# is installed editable; when the venv is used from another checkout (a fresh clone, CI) it is
# re-pointed at that one (a few seconds).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DLRM_VENV:-$HOME/.cache/oneflow-dlrm/venv-py310}"
say() { echo "[setup_env] $*" >&2; }

# The CUDA libraries OneFlow links: the real ones (requirements-cuda.txt, 1.3 GB) where nvidia-smi lists
# a GPU, else stand-ins built with the C compiler (scripts/oneflow_preload.py; no compiler: the real
# ones). DLRM_CUDA=1 forces the real ones, 0 the stand-ins.
cuda_mode() {
  case "${DLRM_CUDA:-auto}" in
    1) echo cuda ;;
    0) echo stubs ;;
    *) if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then echo cuda
       elif command -v "${CC:-cc}" >/dev/null 2>&1; then echo stubs
       else echo cuda; fi ;;
  esac
}
mode="$(cuda_mode)"
stamp_of() {
  { cat "$here/requirements.txt" "$here/requirements-cuda.txt" "$here/scripts/oneflow_preload.py" \
        "$here/scripts/oneflow_cuda_symbols.txt" "$here/pyproject.toml"; echo "$mode"; } | sha256sum | cut -c1-16
}
want="$(stamp_of)"
install_package() {  # editable install of this checkout's dlrm package (no dependencies: those are pinned above)
  say "installing the dlrm package from $here (editable)"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$here" >&2
  echo "$here" > "$venv/.dlrm-checkout"
}
which_only=0  # --which-python: print the Python 3.10 the venv would be made from (found or fetched), stop
[[ "${1:-}" == "--which-python" ]] && which_only=1
if (( !which_only )) && [[ -x "$venv/bin/python" && -f "$venv/.dlrm-stamp" && "$(cat "$venv/.dlrm-stamp")" == "$want" ]]; then
  [[ -f "$venv/.dlrm-checkout" && "$(cat "$venv/.dlrm-checkout")" == "$here" ]] || install_package
  echo "$venv/bin/python"; exit 0
fi

find_python310() {
  local c
  for c in "${PYTHON:-}" "$(command -v python3.10 || true)" \
           "$(command -v pyenv >/dev/null && ls -d "$(pyenv root)"/versions/3.10.*/bin/python3.10 2>/dev/null | tail -n1 || true)" \
           "$(ls -d "$HOME"/.pyenv/versions/3.10.*/bin/python3.10 2>/dev/null | tail -n1 || true)"; do
    if [[ -n "$c" && -x "$c" ]] && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}
# No Python 3.10 on the machine: uv (from PyPI, into a scratch venv of whatever python3 there is)
# downloads a standalone CPython 3.10. Its own output goes to $uv_dir/uv.log; prints the python, or
# fails with the reason in $uv_dir/why (this runs in a subshell).
uv_dir="${DLRM_UV_DIR:-$HOME/.cache/oneflow-dlrm/uv}"
python310_from_uv() {
  local base
  base="$(command -v python3 || true)"
  mkdir -p "$uv_dir"
  rm -f "$uv_dir/why"
  [[ -n "$base" ]] || { echo "no python3 to install uv with" > "$uv_dir/why"; return 1; }
  say "no Python 3.10 found: getting one with uv (log: $uv_dir/uv.log)"
  if [[ ! -x "$uv_dir/venv/bin/uv" ]]; then
    { "$base" -m venv "$uv_dir/venv" && "$uv_dir/venv/bin/python" -m pip install -q --disable-pip-version-check uv; } \
      >>"$uv_dir/uv.log" 2>&1 || { rm -rf "$uv_dir/venv"; echo "installing uv from PyPI failed" > "$uv_dir/why"; return 1; }
  fi
  UV_PYTHON_INSTALL_DIR="$uv_dir/python" "$uv_dir/venv/bin/uv" python install 3.10 >>"$uv_dir/uv.log" 2>&1 \
    || { echo "'uv python install 3.10' could not get one ($(grep -o 'cause: .*' "$uv_dir/uv.log" | tail -n1))" \
           > "$uv_dir/why"; return 1; }
  UV_PYTHON_INSTALL_DIR="$uv_dir/python" "$uv_dir/venv/bin/uv" python find --no-project 3.10 2>>"$uv_dir/uv.log"
}
py310="$(find_python310)" || py310="$(python310_from_uv)" || {
  echo "error: Python 3.10 not found (oneflow 0.9.0 has wheels for CPython 3.7-3.10 only) and $(cat "$uv_dir/why" 2>/dev/null || echo "uv found none"): install python3.10 (e.g. 'apt-get install python3.10' where your distribution has it, or 'pyenv install 3.10') or set PYTHON=/path/to/python3.10" >&2
  exit 1
}
if (( which_only )); then echo "$py310"; exit 0; fi

if [[ ! -x "$venv/bin/python" ]]; then
  say "creating $venv with $py310"
  mkdir -p "$(dirname "$venv")"
  "$py310" -m venv "$venv"
fi
say "installing requirements (first time: a few minutes)"
"$venv/bin/python" -m pip install -q --disable-pip-version-check wheel "setuptools>=64" >&2  # pyspark builds from sdist; PEP 660
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements.txt" >&2
if [[ "$mode" == cuda ]]; then
  say "installing the CUDA libraries OneFlow links (requirements-cuda.txt, 1.3 GB)"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements-cuda.txt" >&2
else
  say "no GPU: stand-ins for the CUDA libraries OneFlow links, built with ${CC:-cc} (DLRM_CUDA=1: the real ones)"
  "$venv/bin/python" "$here/scripts/oneflow_preload.py" stubs "$venv/lib/dlrm-cuda-stubs" "${CC:-cc}" >&2 || {
    echo "error: building the CUDA stand-ins with ${CC:-cc} failed: run with DLRM_CUDA=1 (installs the real libraries)" >&2
    exit 1; }
fi
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$here/scripts/oneflow_preload.py" "$site/_oneflow_cu11_preload.py"
echo "import _oneflow_cu11_preload; _oneflow_cu11_preload.install()" > "$site/oneflow_cu11_preload.pth"
install_package
(cd / && "$venv/bin/python" -c "import dlrm, oneflow, pyspark, pyarrow, numpy; assert numpy.__version__ < '2'") >&2 \
  || { echo "error: the environment at $venv does not import oneflow/pyspark/pyarrow; delete it and re-run" >&2; exit 1; }
echo "$want" > "$venv/.dlrm-stamp"
say "ready: $venv"
echo "$venv/bin/python"
