"""The Spark-free part of preprocessing: arguments, input files, split bounds, output directory.

Every check here runs before Spark starts, so a bad command line fails in a second with one
``error: ...`` line (PreprocessError carries its exit code).
"""
import glob
import gzip
import os
import re
import shutil
import sys

from dlrm.outputs import replace_refusal
from dlrm.schema import DATASET_INFO_FILE, NUM_SPARSE, ORIGINAL_README_FILE, SPLITS

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
DEFAULT_MOD_IDX = 40000000  # --mod_idx's default
TOOL = "tools/criteo1t_parquet.py"  # recorded in dataset_info.json

KAGGLE_RULE = (
    "kaggle layout (train.txt, n lines): the first floor(6n/7) lines -> train (shuffled), the "
    "next (n - floor(6n/7)) // 2 -> test, the rest -> val, file order kept (the 7-day rule of "
    "facebookresearch DLRM)"
)
CRITEO1T_RULE = (
    "criteo1t layout (day_0 .. day_K, also day_N.gz, contiguous from 0, K >= 1): days 0..K-1 -> "
    "train (shuffled); the first --num_test_examples lines of day K -> test, the remaining lines "
    "-> val, file order kept"
)


class PreprocessError(Exception):
    """An error reported as one line ``error: ...`` on stderr, with an exit code."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code
        self.resumable = False  # True: the run's finished passes are kept for --resume


def log(msg):
    print("[preprocess] %s" % msg, flush=True)


def warn(msg):
    print("[preprocess] warning: %s" % msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------------------------


def max_categorical_id(mod_idx):
    """The largest id the mod transform gives (column C26's missing-value id)."""
    return (NUM_SPARSE - 1) * (mod_idx + 1) + mod_idx


def largest_mod_idx(id_max):
    """The largest --mod_idx whose max_categorical_id is at most id_max."""
    return (id_max - (NUM_SPARSE - 1)) // NUM_SPARSE


def check_args(args):
    """Raise PreprocessError (exit code 2) for argument values the parser cannot rule out."""
    if args.spark_driver_memory_gb <= 0:
        raise PreprocessError("--spark_driver_memory_gb must be > 0", 2)
    if args.num_test_examples < 0:
        raise PreprocessError("--num_test_examples must be >= 0", 2)
    if args.train_files < 1 or args.eval_files < 1:
        raise PreprocessError("--train_files and --eval_files must be >= 1", 2)
    if args.shuffle_partitions is not None and args.shuffle_partitions < 1:
        raise PreprocessError("--shuffle_partitions must be >= 1", 2)
    if args.min_frequency < 0:
        raise PreprocessError("--min_frequency must be >= 0 (0: mod or hash ids)", 2)
    if args.broadcast_vocab_rows < 0:
        raise PreprocessError("--broadcast_vocab_rows must be >= 0", 2)
    if args.progress_interval <= 0:
        raise PreprocessError("--progress_interval must be > 0", 2)
    if not 0 <= args.max_malformed_fraction <= 1:
        raise PreprocessError("--max_malformed_fraction must be in [0, 1]", 2)
    if args.min_frequency > 0:
        if args.mod_idx != DEFAULT_MOD_IDX:
            raise PreprocessError("--min_frequency gives vocabulary ids, which replace the mod "
                                  "and hash ids of --mod_idx; drop one of the two", 2)
        return  # --key_type int32: checked once the table sizes are known (check_int32_ids)
    if max_categorical_id(args.mod_idx) > INT64_MAX:
        raise PreprocessError("--mod_idx %d: the largest id %d does not fit int64; use --mod_idx "
                              "<= %d" % (args.mod_idx, max_categorical_id(args.mod_idx),
                                         largest_mod_idx(INT64_MAX)), 2)
    if args.key_type == "int32":
        if args.mod_idx <= 0:
            raise PreprocessError("--key_type int32 needs mod ids (--mod_idx > 0); hash ids "
                                  "are 64-bit", 2)
        if max_categorical_id(args.mod_idx) > INT32_MAX:
            raise PreprocessError(
                "--key_type int32: the largest id %d (mod_idx %d) does not fit int32; use "
                "--mod_idx <= %d or --key_type int64"
                % (max_categorical_id(args.mod_idx), args.mod_idx,
                   largest_mod_idx(INT32_MAX)), 2)


def check_int32_ids(table_sizes):
    """--key_type int32 with vocabulary ids: the largest id (sum of table sizes - 1) must fit."""
    if sum(table_sizes) - 1 > INT32_MAX:
        raise PreprocessError("--key_type int32: the vocabulary ids go up to %d, which does not "
                              "fit int32; use a larger --min_frequency or --key_type int64"
                              % (sum(table_sizes) - 1), 1)


def physical_memory_bytes():
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # pragma: no cover - psutil is a requirement
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def driver_memory_gb(requested_gb, master):
    """The driver memory to use: capped at 80% of physical RAM in local mode."""
    if not master.startswith("local"):
        return requested_gb
    total = physical_memory_bytes()
    if requested_gb * 2**30 > total:
        capped = max(1, int(total * 0.8 / 2**30))
        warn("--spark_driver_memory_gb %d is more than this machine's RAM (%.1f GiB); using "
             "%d GB (80%%)" % (requested_gb, total / 2**30, capped))
        return capped
    return requested_gb


# --------------------------------------------------------------------------------------------
# input files and split bounds
# --------------------------------------------------------------------------------------------

_DAY_RE = re.compile(r"^day_(\d+)(\.gz)?$")


def _file_is_empty(path):
    if os.path.getsize(path) == 0:
        return True
    if path.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                return len(f.read(1)) == 0
        except (OSError, EOFError) as e:
            raise PreprocessError("cannot read gzip file %s: %s" % (path, e), 2)
    return False


def plan_inputs(input_dir, input_format="auto"):
    """Return (format, [paths]) for the input directory; the split file is the last path.

    Raises PreprocessError (exit code 2) for a missing directory, no recognised files, gaps in
    the day files, duplicates or empty files.
    """
    if not os.path.isdir(input_dir):
        raise PreprocessError("input directory %s does not exist" % input_dir, 2)
    names = os.listdir(input_dir)
    kaggle = [n for n in ("train.txt", "train.txt.gz") if n in names]
    days = {}
    for n in names:
        m = _DAY_RE.match(n)
        if m and os.path.isfile(os.path.join(input_dir, n)):
            d = int(m.group(1))
            if d in days:
                raise PreprocessError("%s: both %s and %s exist; keep one"
                                      % (input_dir, days[d], n), 2)
            days[d] = n
    fmt = input_format
    if fmt == "auto":
        if kaggle:
            fmt = "kaggle"
        elif days:
            fmt = "criteo1t"
        else:
            raise PreprocessError("no Criteo files in %s (expected day_0..day_K or train.txt)"
                                  % input_dir, 2)
    if fmt == "kaggle":
        if not kaggle:
            raise PreprocessError("no train.txt in %s (--input_format kaggle)" % input_dir, 2)
        if len(kaggle) > 1:
            raise PreprocessError("%s: both train.txt and train.txt.gz exist; keep one"
                                  % input_dir, 2)
        paths = [os.path.join(input_dir, kaggle[0])]
    else:
        if not days:
            raise PreprocessError("no day_N files in %s (--input_format criteo1t)" % input_dir, 2)
        last = max(days)
        missing = [d for d in range(last + 1) if d not in days]
        if missing:
            shown = ", ".join("day_%d" % d for d in missing[:5]) + (", ..." if len(missing) > 5
                                                                   else "")
            raise PreprocessError("day files in %s are not contiguous from day_0: missing %s"
                                  % (input_dir, shown), 2)
        if last < 1:
            raise PreprocessError("%s has only day_0; criteo1t needs at least two days (the "
                                  "last day is split into test and val)" % input_dir, 2)
        paths = [os.path.join(input_dir, days[d]) for d in range(last + 1)]
    for path in paths:
        if _file_is_empty(path):
            raise PreprocessError("input file %s is empty" % path, 2)
    return fmt, paths


def split_bounds(fmt, n, num_test_examples, name):
    """{split: (first line, end line)} of the split file (name, n lines), by the split rule.

    kaggle: train, test and val (KAGGLE_RULE); criteo1t: test and val only, train being the
    other days (CRITEO1T_RULE; warns when num_test_examples > n).
    """
    if fmt == "kaggle":
        n_train = (6 * n) // 7
        n_test = (n - n_train) // 2
        return {"train": (0, n_train), "test": (n_train, n_train + n_test),
                "val": (n_train + n_test, n)}
    n_test = min(num_test_examples, n)
    if num_test_examples > n:
        warn("--num_test_examples %d is more than the %d lines of %s: test gets all of "
             "them, val none" % (num_test_examples, n, name))
    return {"test": (0, n_test), "val": (n_test, n)}


def split_rule(fmt):
    return KAGGLE_RULE if fmt == "kaggle" else CRITEO1T_RULE


# --------------------------------------------------------------------------------------------
# output directory: a temporary sibling, renamed into place when complete
# --------------------------------------------------------------------------------------------


def check_output_outside_input(input_dir, output_dir):
    """Refuse an output_dir that is, or contains, the input_dir.

    An output below the input is harmless (only day_N / train.txt are read); one that contains
    the input would be replaced, input included, by --overwrite.
    """
    out_real = os.path.realpath(output_dir)
    in_real = os.path.realpath(input_dir)
    if out_real == in_real or in_real.startswith(out_real + os.sep):
        raise PreprocessError("--output_dir %s contains --input_dir %s; choose an output "
                              "directory outside the input" % (output_dir, input_dir), 2)


# What a run publishes as output_dir (a dlrm.outputs layout): --overwrite replaces only this.
# Spark's files: part-*.parquet, their .crc checksums, _SUCCESS (an empty split's write).
_SPARK_FILES = r"[^/]*\.parquet(\.crc)?|\.?_SUCCESS(\.crc)?"
OUTPUT_LAYOUT = dict({s: _SPARK_FILES for s in SPLITS}, **{
    DATASET_INFO_FILE: None, ORIGINAL_README_FILE: None,  # (README.md: --export_dataset_info)
    "vocabulary": r"(column=\d+/)?(%s)" % _SPARK_FILES})  # passes.VOCAB_DIR (--min_frequency)


def check_replaceable(output_dir):
    """Raise PreprocessError (exit code 2) unless the non-empty output_dir is a dataset this tool
    wrote: its dataset_info.json, and besides only its splits, README.md and vocabulary."""
    refusal = replace_refusal(output_dir, OUTPUT_LAYOUT, DATASET_INFO_FILE, TOOL)
    if refusal:
        raise PreprocessError(refusal, 2)


def _dir_nonempty(path):
    return os.path.isdir(path) and bool(os.listdir(path))


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_prefix(output_dir):
    """(parent, prefix) of output_dir's temporary siblings: parent/.NAME.incomplete-PID."""
    parent, name = os.path.split(os.path.abspath(output_dir))
    return parent, ".%s.incomplete-" % name


def prepare_output(output_dir, overwrite, keep=None):
    """Check output_dir and remove stale temp dirs of killed runs, except ``keep`` (the one
    --resume continues). Returns the temp dir path."""
    output_dir = os.path.abspath(output_dir)
    parent, name = os.path.split(output_dir)
    if not name:
        raise PreprocessError("invalid --output_dir %s" % output_dir, 2)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise PreprocessError("output_dir %s exists and is not a directory" % output_dir, 2)
    if _dir_nonempty(output_dir) and not overwrite:
        raise PreprocessError("output_dir %s exists and is not empty; pass --overwrite to "
                              "replace it" % output_dir, 2)
    if _dir_nonempty(output_dir):
        check_replaceable(output_dir)  # --overwrite: refused before any work
    os.makedirs(parent, exist_ok=True)
    prefix = temp_prefix(output_dir)[1]
    for stale in sorted(glob.glob(os.path.join(glob.escape(parent), glob.escape(prefix) + "*"))):
        suffix = os.path.basename(stale)[len(prefix):]
        if stale == keep:
            continue
        if suffix.isdigit() and int(suffix) != os.getpid() and pid_alive(int(suffix)):
            warn("%s belongs to a running process (pid %s); left alone" % (stale, suffix))
            continue
        log("removing stale temporary directory %s (left by a killed run)" % stale)
        shutil.rmtree(stale, ignore_errors=True)
    return os.path.join(parent, prefix + str(os.getpid()))


def publish_output(tmp_dir, output_dir, overwrite):
    """Atomically move the finished temp dir to output_dir (old one removed afterwards).
    A refusal (PreprocessError) leaves tmp_dir, complete, and names it."""
    output_dir = os.path.abspath(output_dir)
    parent, name = os.path.split(output_dir)
    old = None
    if os.path.isdir(output_dir):
        if os.listdir(output_dir):
            if not overwrite:  # appeared while we were running
                raise PreprocessError("output_dir %s appeared during the run and is not "
                                      "empty; nothing replaced; the new dataset is complete in "
                                      "%s" % (output_dir, tmp_dir))
            try:
                check_replaceable(output_dir)  # again: something may have been added since
            except PreprocessError as e:
                raise PreprocessError("%s; the new dataset is complete in %s" % (e, tmp_dir),
                                      1) from None
            old = os.path.join(parent, ".%s.old-%d" % (name, os.getpid()))
            os.rename(output_dir, old)
        else:
            os.rmdir(output_dir)
    os.rename(tmp_dir, output_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        log("replaced the previous %s" % output_dir)
