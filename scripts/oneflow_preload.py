"""Make `import oneflow` work (and its CPU GEMMs fast) without exporting anything.

oneflow 0.9.0 dlopens libcublas.so.11 and libcudnn*.so.8 at import, even on CPU. The pip wheels
nvidia-cublas-cu11 / nvidia-cudnn-cu11 ship them under site-packages/nvidia/*/lib, which the
loader does not search. scripts/setup_env.sh installs this file into the venv's site-packages
with a .pth line, so the libraries are preloaded (RTLD_GLOBAL) the first time anything imports
oneflow; other programs in the venv (Spark workers, pytest) pay nothing.
"""
import ctypes
import glob
import importlib.abc
import os
import sys

# Load order matters: each library's dependencies first.
_LIBS = [
    "nvidia/cublas/lib/libcublasLt.so.11",
    "nvidia/cublas/lib/libcublas.so.11",
    "nvidia/cudnn/lib/libcudnn_ops_infer.so.8",
    "nvidia/cudnn/lib/libcudnn_ops_train.so.8",
    "nvidia/cudnn/lib/libcudnn_cnn_infer.so.8",
    "nvidia/cudnn/lib/libcudnn_cnn_train.so.8",
    "nvidia/cudnn/lib/libcudnn_adv_infer.so.8",
    "nvidia/cudnn/lib/libcudnn_adv_train.so.8",
    "nvidia/cudnn/lib/libcudnn.so.8",
]


def tune_openblas():
    """OneFlow 0.9.0 bundles an OpenBLAS that does not recognise recent x86 CPUs and falls back to
    its SSE3 'Prescott' GEMM kernel (~18 GFLOP/s here vs ~50 with the Haswell one; see
    benchmarks/bench_train.py). Pick the AVX2/FMA kernel when the CPU has both, unless the user chose."""
    if "OPENBLAS_CORETYPE" in os.environ:
        return
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return
    if "avx2" in flags and "fma" in flags:
        os.environ["OPENBLAS_CORETYPE"] = "Haswell"


def preload_cuda_libs():
    for site in sys.path:
        if not os.path.isdir(os.path.join(site, "nvidia")):
            continue
        for rel in _LIBS:
            for path in glob.glob(os.path.join(site, rel)):
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        return


class _PreloadOnOneflowImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "oneflow":
            sys.meta_path.remove(self)
            tune_openblas()
            preload_cuda_libs()
        return None  # let the normal finders import it


def install():
    if not any(isinstance(f, _PreloadOnOneflowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PreloadOnOneflowImport())
