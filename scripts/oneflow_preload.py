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


def cpu_flags():
    """The x86 feature flags of /proc/cpuinfo (empty where it has none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()


HOOK_SET = "DLRM_HOOK_SET"  # the variables set_default set (not the user), comma-separated


def set_default(name, value):
    """os.environ[name] = value unless the user set it; recorded in DLRM_HOOK_SET, so that a benchmark
    can start another program (the PyTorch peer) without our thread settings. A value a parent's hook
    set is this process's to recompute: under oneflow.distributed.launch the launcher's own process
    chose MKL_NUM_THREADS before the launcher gave each rank OMP_NUM_THREADS=1."""
    ours = os.environ.get(HOOK_SET, "").split(",")
    if name in os.environ and name not in ours:
        return
    os.environ[name] = value
    os.environ[HOOK_SET] = ",".join(n for n in ours + ([] if name in ours else [name]) if n)


def tune_openblas(flags):
    """OneFlow 0.9.0 bundles an OpenBLAS that does not recognise recent x86 CPUs and falls back to
    its SSE3 'Prescott' GEMM kernel (~18 GFLOP/s here vs ~50 with the Haswell one; see
    benchmarks/bench_train.py). Pick the AVX2/FMA kernel when the CPU has both, unless the user chose."""
    if {"avx2", "fma"} <= flags:
        set_default("OPENBLAS_CORETYPE", "Haswell")


def find_mkl(prefix=sys.prefix):
    """Intel MKL's single dynamic library as the PyPI package `mkl` installs it (<prefix>/lib), or None."""
    found = sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so.*")))
    return found[-1] if found else None


def mkl_threads(environ=os.environ, ncpu=None):
    """MKL's threads per process: OMP_NUM_THREADS when set (oneflow.distributed.launch sets it to 1
    for each of several ranks per node), else half the cores: OneFlow's CPU runtime runs two
    kernel threads at once (measured: two threads share a step's kernel time about evenly), each
    calling the BLAS."""
    if environ.get("OMP_NUM_THREADS", "").isdigit() and int(environ["OMP_NUM_THREADS"]) > 0:
        return int(environ["OMP_NUM_THREADS"])
    return max(1, (ncpu or os.cpu_count() or 2) // 2)


def choose_blas(flags):
    """Serve OneFlow's CPU matmuls with Intel MKL where it is installed and the CPU has AVX2/FMA.

    liboneflow calls cblas_sgemm through its PLT, so a library loaded RTLD_GLOBAL before it
    provides the symbol: MKL's GEMM ran 1.45-2x faster than the bundled OpenBLAS at the model's
    shapes, with equal results (tests/test_blas.py). DLRM_BLAS=openblas keeps OneFlow's own.
    Returns the path of the library loaded, or None."""
    os.environ.pop("DLRM_BLAS_LIBRARY", None)  # inherited from a parent that chose differently
    choice = os.environ.get("DLRM_BLAS", "auto")
    if choice == "openblas" or not {"avx2", "fma"} <= flags:
        return None
    path = find_mkl()
    if path is None:
        if choice == "mkl":
            sys.stderr.write("warning: DLRM_BLAS=mkl but no libmkl_rt.so.* in " + os.path.join(sys.prefix, "lib")
                             + " (pip install mkl); using OneFlow's OpenBLAS\n")
        return None
    set_default("MKL_NUM_THREADS", str(mkl_threads()))
    # Idle OpenMP workers sleep at once instead of spinning 200 ms, so they do not take cores
    # from OneFlow's other kernel thread (2 MKL threads: 0.87 vs 0.91 CPU-s per step).
    set_default("KMP_BLOCKTIME", "0")
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    os.environ["DLRM_BLAS_LIBRARY"] = path  # what the process runs with, for benchmarks and tests
    return path


# Without a GPU the real libraries (1.3 GB of wheels) are never called. Stand-ins named as them (their
# SONAMEs) that define the functions OneFlow imports, under the same symbol versions, satisfy the
# loader; OneFlow's CPU ops run (scripts/setup_env.sh makes them on machines without GPUs).
STUB_DIR = os.path.join(sys.prefix, "lib", "dlrm-cuda-stubs")
SYMBOLS_FILE = "oneflow_cuda_symbols.txt"  # beside this file in the checkout: name@library lines


def preload_cuda_libs(sites=None, stub_dir=STUB_DIR):
    """Load the CUDA libraries OneFlow links (RTLD_GLOBAL, so its own load finds them by name): the pip
    wheels' where they are installed, else the stand-ins in stub_dir."""
    for site in sys.path if sites is None else sites:
        if not os.path.isdir(os.path.join(site, "nvidia")):
            continue
        for rel in _LIBS:
            for path in glob.glob(os.path.join(site, rel)):
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        return
    for rel in _LIBS:
        path = os.path.join(stub_dir, os.path.basename(rel))
        if os.path.isfile(path):
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def read_symbols(path):
    """{library: [function, ...]} of a symbols file."""
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                name, lib = line.split("@", 1)
                out.setdefault(lib, []).append(name)
    return out


def make_cuda_stubs(stub_dir, symbols_file, cc="cc"):
    """Write the stand-ins into stub_dir, built with the C compiler cc: per library of _LIBS a shared
    object with its SONAME whose functions (from symbols_file) return a failure status (1; the
    error-string functions a string) under the library's symbol version. Raises OSError or CalledProcessError."""
    import subprocess
    import tempfile

    symbols = read_symbols(symbols_file)
    os.makedirs(stub_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for rel in _LIBS:
            lib = os.path.basename(rel)
            names = symbols.get(lib, [])
            src, script = os.path.join(tmp, lib + ".c"), os.path.join(tmp, lib + ".map")
            with open(src, "w") as f:
                f.write("/* stand-in for %s: OneFlow links it; a CPU run never calls it */\n" % lib)
                # each returns a failure status (1), except the error strings: OneFlow prints them
                f.writelines('const char *%s(void) { return "no GPU here (a stand-in library)"; }\n' % n
                             if n.endswith("GetErrorString") else "int %s(void) { return 1; }\n" % n for n in names)
            version = []  # a library OneFlow imports nothing from (it only loads it) needs none
            if names:
                with open(script, "w") as f:
                    f.write("%s { global: %s local: *; };\n" % (lib, "".join(n + "; " for n in names)))
                version = ["-Wl,--version-script=" + script]
            subprocess.run([cc, "-shared", "-fPIC", "-o", os.path.join(tmp, lib), "-Wl,-soname," + lib, *version,
                            src], check=True, capture_output=True)
            os.replace(os.path.join(tmp, lib), os.path.join(stub_dir, lib))


def imported_cuda_symbols(site):
    """The name@library lines of the CUDA functions oneflow's binaries under site import (readelf)."""
    import subprocess

    paths = glob.glob(os.path.join(site, "oneflow.libs", "*.so*")) + \
        glob.glob(os.path.join(site, "oneflow", "_oneflow_internal*.so"))
    found = set()
    for path in paths:
        out = subprocess.run(["readelf", "--dyn-syms", "-W", path], capture_output=True, text=True,
                             check=True).stdout
        for line in out.splitlines():
            cols = line.split()
            if len(cols) >= 8 and cols[6] == "UND" and "@" in cols[7]:
                name, lib = cols[7].split("@", 1)
                if lib.startswith(("libcudnn", "libcublas")):
                    found.add("%s@%s" % (name, lib.split(" ")[0]))
    return sorted(found)


class _PreloadOnOneflowImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "oneflow":
            sys.meta_path.remove(self)
            flags = cpu_flags()
            tune_openblas(flags)
            choose_blas(flags)
            preload_cuda_libs()
        return None  # let the normal finders import it


def install():
    if not any(isinstance(f, _PreloadOnOneflowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PreloadOnOneflowImport())


if __name__ == "__main__":
    # python oneflow_preload.py stubs DIR [CC]: make_cuda_stubs (scripts/setup_env.sh);
    # python oneflow_preload.py symbols: the symbols file's lines for the installed oneflow
    here = os.path.dirname(os.path.abspath(__file__))
    if len(sys.argv) >= 3 and sys.argv[1] == "stubs":
        make_cuda_stubs(sys.argv[2], os.path.join(here, SYMBOLS_FILE), *sys.argv[3:4])
    elif sys.argv[1:] == ["symbols"]:
        import sysconfig
        print("\n".join(imported_cuda_symbols(sysconfig.get_paths()["purelib"])))
    else:
        sys.exit("usage: oneflow_preload.py stubs DIR [CC] | symbols")
