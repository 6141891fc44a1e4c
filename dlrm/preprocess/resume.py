"""The work-in-progress record of a preprocessing run, which ``--resume`` continues from.

Every run keeps ``STATE_FILE`` in its temporary output directory (plan.prepare_output's
``.NAME.incomplete-PID``): the inputs (names, sizes, modification times), every setting, the
number of partitions Spark reads each input file as, and the result of each finished pass.
A pass is recorded only once it has finished and passed its checks, and the file is replaced
atomically, so a run killed at any point (kill -9 included) leaves a record that names exactly
the passes whose output is complete; whatever else is in the directory is half-written and is
deleted before the pass that writes it runs again. No Spark import here.
"""
import contextlib
import errno
import glob
import json
import os
import shutil
import tempfile

from dlrm.preprocess.plan import PreprocessError, log

STATE_FILE = "_preprocess_state.json"  # removed before the directory is published
STATE_VERSION = 1
# Arguments that cannot change what is written, so a resumed run may differ in them: among them
# the remedies for a full scratch disk and for a driver out of memory. (How Spark partitions the
# inputs, which the other Spark settings can change, is compared by check_partitions.)
NOT_COMPARED = ("resume", "overwrite", "progress_interval", "spark_tmp_dir",
                "spark_driver_memory_gb")


def resumable(err):
    """err (a PreprocessError) marked to keep the run's finished passes for --resume."""
    err.resumable = True
    return err


def describe_inputs(paths):
    """[{name, size, mtime_ns}] of the input files, in order."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append({"name": os.path.basename(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def settings_of(args):
    """Every setting of the run that --resume must find unchanged."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in NOT_COMPARED}


def first_difference(old, new):
    """One phrase naming what differs between two records (inputs and settings), or None."""
    a = {f["name"]: f for f in old["inputs"]}
    b = {f["name"]: f for f in new["inputs"]}
    if list(a) != list(b):
        return "input files %s -> %s" % (", ".join(a) or "none", ", ".join(b) or "none")
    for name in a:
        for key, what in (("size", "size"), ("mtime_ns", "modification time")):
            if a[name][key] != b[name][key]:
                return "input %s: %s %s -> %s" % (name, what, a[name][key], b[name][key])
    for k in sorted(set(old["settings"]) | set(new["settings"])):
        va, vb = old["settings"].get(k), new["settings"].get(k)
        if va != vb:
            return "--%s %s -> %s" % (k, va, vb)
    return None


def find_resumable(parent, prefix, alive):
    """The newest ``prefix*`` directory in parent holding a STATE_FILE whose run is gone
    (alive(pid) false), or None."""
    found = []
    for d in glob.glob(os.path.join(glob.escape(parent), glob.escape(prefix) + "*")):
        suffix = os.path.basename(d)[len(prefix):]
        state = os.path.join(d, STATE_FILE)
        if not suffix.isdigit() or alive(int(suffix)) or not os.path.isfile(state):
            continue
        found.append((os.path.getmtime(state), d))
    return max(found)[1] if found else None


class WorkState:
    """The record in ``tmp_dir/STATE_FILE``: ``passes`` maps a pass name to its result."""

    def __init__(self, tmp_dir, record):
        self.dir = tmp_dir
        self.path = os.path.join(tmp_dir, STATE_FILE)
        self.record = record

    @classmethod
    def start(cls, tmp_dir, paths, args):
        """A fresh record for a new run (tmp_dir created)."""
        os.makedirs(tmp_dir)
        state = cls(tmp_dir, {"version": STATE_VERSION, "inputs": describe_inputs(paths),
                              "settings": settings_of(args), "partitions": None, "passes": {}})
        state.save()
        return state

    @classmethod
    def load(cls, tmp_dir):
        with open(os.path.join(tmp_dir, STATE_FILE)) as f:
            return cls(tmp_dir, json.load(f))

    def moved_to(self, tmp_dir):
        """This record, its directory renamed to tmp_dir."""
        return WorkState(tmp_dir, self.record)

    def check_same_run(self, paths, args):
        """Raise PreprocessError (exit code 2) naming the first input or setting that differs
        from the interrupted run's."""
        now = {"inputs": describe_inputs(paths), "settings": settings_of(args)}
        if self.record.get("version") != STATE_VERSION:
            raise PreprocessError("cannot resume %s: written by another version of the tool; "
                                  "rerun without --resume" % self.dir, 2)
        diff = first_difference(self.record, now)
        if diff:
            raise PreprocessError("cannot resume %s: %s since the interrupted run; rerun with "
                                  "the same inputs and arguments, or without --resume to start "
                                  "over" % (self.dir, diff), 2)

    def check_partitions(self, partitions, names):
        """The interrupted run's line positions and train shuffle hold only if Spark reads
        every input file as the same partitions (they depend on the cores and on
        spark.sql.files.maxPartitionBytes); record them on the first call."""
        old = self.record.get("partitions")
        if old is None:
            self.record["partitions"] = list(partitions)
            self.save()
            return
        for name, a, b in zip(names, old, partitions):
            if a != b:  # the work is kept (resumable) for a run with the same resources
                raise resumable(PreprocessError(
                    "cannot resume %s: Spark reads %s as %d partitions, the interrupted run "
                    "read it as %d (other cores or spark.sql.files.maxPartitionBytes), so line "
                    "positions and the train shuffle would differ; resume with the same Spark "
                    "resources, or rerun without --resume" % (self.dir, name, b, a), 2))

    def done(self, name):
        return self.record["passes"].get(name)

    def finish(self, name, result):
        self.record["passes"][name] = result
        self.save()

    @property
    def finished(self):
        return list(self.record["passes"])

    def save(self):
        """Replace STATE_FILE atomically (temp file, fsync, rename)."""
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.record, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def remove_unfinished(self, keep=()):
        """Delete everything in the directory that no finished pass recorded (half-written
        output of the pass that was running), keeping ``keep`` (relative paths)."""
        keep = set(keep) | {STATE_FILE}
        for entry in os.listdir(self.dir):
            if entry in keep:
                continue
            p = os.path.join(self.dir, entry)
            log("removing %s (half-written by the interrupted pass)" % p)
            if os.path.isdir(p):
                shutil.rmtree(p)
            else:
                os.remove(p)

    def close(self):
        """Drop the record before the directory is published as the output."""
        os.remove(self.path)


# --------------------------------------------------------------------------------------------
# a full disk
# --------------------------------------------------------------------------------------------

NO_SPACE = "No space left on device"
# Java frames that write Spark's scratch space (shuffle files, sort spills), checked first:
# a write task that spills has the output writer's frames too.
SCRATCH_FRAMES = ("DiskBlockObjectWriter", "ShuffleExternalSorter", "UnsafeSorterSpillWriter",
                  "IndexShuffleBlockResolver", "BypassMergeSortShuffleWriter", "DiskStore",
                  "ExternalSorter", "ShuffleWriter")
OUTPUT_FRAMES = ("ParquetFileWriter", "ParquetOutputWriter", "FileFormatDataWriter",
                 "OutputCommitter", "RawLocalFileSystem", "ChecksumFileSystem")


def scratch_dirs(args, spark):
    """Spark's scratch directories: --spark_tmp_dir, else spark.local.dir / SPARK_LOCAL_DIRS,
    else the JVM's default (the system temp directory)."""
    if args.spark_tmp_dir and not os.environ.get("PYSPARK_GATEWAY_PORT"):
        return [os.path.abspath(args.spark_tmp_dir)]
    conf = spark.sparkContext.getConf().get("spark.local.dir", None) if spark else None
    dirs = conf or os.environ.get("SPARK_LOCAL_DIRS") or tempfile.gettempdir()
    return [d for d in dirs.split(",") if d]


def _free_fraction(path):
    try:
        st = os.statvfs(path)
        return st.f_bavail / max(1, st.f_blocks), st.f_bavail * st.f_frsize
    except OSError:
        return 1.0, None


# Peak sizes measured on synthetic days (3 x 3000 rows, mod ids; du of the directories during a
# run): Spark's scratch ~0.7x the train input text (the train shuffle), the parquet output
# ~0.3x the whole input text.
SCRATCH_PER_TRAIN_BYTE = 0.7
OUTPUT_PER_INPUT_BYTE = 0.3


def which_disk_filled(text, scratch, output):
    """(directory, flag, what it holds) of the disk that filled, from the failure's text (the
    Java stack frames), else the fuller of the two file systems."""
    where = [(d, "--spark_tmp_dir", "Spark's shuffle and sort-spill files") for d in scratch]
    out = (output, "--output_dir", "the parquet output")
    if any(f in text for f in SCRATCH_FRAMES):
        return where[0]
    if any(f in text for f in OUTPUT_FRAMES) or "Errno" in text:
        return out
    return min(where + [out], key=lambda w: _free_fraction(w[0])[0])


def _size(n):
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if n >= scale:
            return "%.1f %s" % (n / scale, unit)
    return "%d B" % n


@contextlib.contextmanager
def disk_full_check(name, args, spark, tmp_dir, train_bytes, input_bytes):
    """Turn a "No space left on device" anywhere in a pass (a Spark task's, or the driver's
    own write) into one PreprocessError line naming the directory that filled and the room it
    needs (from the input sizes: train_bytes of train input text, input_bytes in all); the
    caller keeps the finished passes for --resume."""
    try:
        yield
    except Exception as e:  # py4j / pyspark errors carry the Java stack trace in their text
        text = str(e)
        if not (NO_SPACE in text or getattr(e, "errno", None) == errno.ENOSPC):
            raise
        path, flag, holds = which_disk_filled(text, scratch_dirs(args, spark), tmp_dir)
        free = _free_fraction(path)[1]
        if flag == "--output_dir":
            need, basis = OUTPUT_PER_INPUT_BYTE * input_bytes, "%.1fx the input" % (
                OUTPUT_PER_INPUT_BYTE)
        else:
            need, basis = SCRATCH_PER_TRAIN_BYTE * train_bytes, "%.1fx the train input" % (
                SCRATCH_PER_TRAIN_BYTE)
        err = PreprocessError(
            "no space left on device in %s (%s: %s) during %s%s; give it about %s free (%s, "
            "measured on uncompressed synthetic days) or point %s at a larger disk, then rerun "
            "the same command with --resume to keep the finished passes"
            % (path, flag, holds, name, "" if free is None else " (%s free now)" % _size(free),
               _size(need), basis, flag), 1)
        raise resumable(err) from None
