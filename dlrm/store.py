"""OneEmbedding's persistent store: its options, its files, and its rows on the CPU.

Format (OneFlow 0.9.0, oneflow/core/embedding/): a string persistent_path of a W-rank run is
the W directories <path>/<rank, zero-padded to len(str(W))>-<W> (key_value_store_options.h); the
ids are dealt to them by ShardingHash(id) % W (hash_functions.cuh), the id itself being the key.
Each directory holds KEY_SIZE and VALUE_SIZE (text, bytes), LOCK (held with a non-blocking fcntl
write lock by the process that has it open for writing), keys/, values/ (append-only chunks:
the files only grow) and snapshots/<name>/LIST with the index of the rows of that snapshot.
A value is `size_factor` x the embedding: the embedding, then the optimizer's state (Adam: m,
then v; Adagrad: the sum of squared gradients), as the update kernels lay it out.

flow.one_embedding.make_persistent_table_writer / _reader use the same code and work on the
CPU, so everything here runs and is tested without a GPU.
"""
import errno
import fcntl
import math
import os

import numpy as np
import oneflow as flow

STORE_TYPES = ("device_mem", "cached_host_mem", "cached_ssd")
KEY_DTYPES = {4: np.int32, 8: np.int64}
VALUE_DTYPE = np.float32


class StoreError(ValueError):
    """A store that cannot be used as it is: the message is one line naming the path."""


def make_store_options(store_type, persistent_path, capacity, cache_memory_budget_mb, size_factor=1):
    """OneEmbedding store options for one of STORE_TYPES (pure Python: testable without CUDA).

    capacity is the total number of embedding rows across ranks (OneEmbedding divides it by
    world size); cache_memory_budget_mb is per GPU; size_factor is the optimizer's (dlrm.optimizers).
    """
    if store_type not in STORE_TYPES:
        raise ValueError(f"--store_type {store_type!r} is not one of {', '.join(STORE_TYPES)}")
    if not persistent_path:
        raise ValueError(f"--persistent_path is required with OneEmbedding (store_type {store_type})")
    one_embedding = flow.one_embedding
    if store_type == "device_mem":
        return one_embedding.make_device_mem_store_options(persistent_path=persistent_path, capacity=capacity,
                                                           size_factor=size_factor)
    if cache_memory_budget_mb <= 0:
        raise ValueError(f"--cache_memory_budget_mb must be > 0 with store_type {store_type}")
    if store_type == "cached_host_mem":
        return one_embedding.make_cached_host_mem_store_options(
            cache_budget_mb=cache_memory_budget_mb, persistent_path=persistent_path, capacity=capacity,
            size_factor=size_factor)
    return one_embedding.make_cached_ssd_store_options(
        cache_budget_mb=cache_memory_budget_mb, persistent_path=persistent_path, capacity=capacity,
        size_factor=size_factor)


def store_capacity(rows, world_size):
    """Rows to reserve across GPUs for `rows` distinct ids: OneEmbedding shards ids by hash, so a
    GPU may receive more than rows / world_size, and a full (device_mem) cache must hold its share
    whatever it is. Headroom: 4 standard deviations of a binomial share, plus 1024 rows per GPU
    (one GPU too: a key outside the dataset's ids, e.g. one written by another run, needs room)."""
    return int(rows + world_size * (4 * math.sqrt(rows / world_size) + 1024))


def rank_paths(persistent_path, world_size):
    """The per-rank directories of a persistent_path (a list is taken as given, as OneEmbedding does)."""
    if isinstance(persistent_path, (list, tuple)):
        return list(persistent_path)
    width = len(str(world_size))
    return [os.path.join(persistent_path, f"{str(r).zfill(width)}-{world_size}") for r in range(world_size)]


def read_size(path, name):
    """The integer in <path>/<name> (KEY_SIZE, VALUE_SIZE), or None if there is no such file."""
    file = os.path.join(path, name)
    if not os.path.isfile(file):
        return None
    with open(file) as f:
        return int(f.read().split()[0])


def lock_held(path):
    """Whether another process holds <path>/LOCK, tested as OneFlow takes it (fcntl F_SETLK write
    lock, PosixFileLockGuard in posix_file.h, which PCHECKs it: any failure aborts the process) and
    released at once. Only before this process opens the store: closing any descriptor of the file
    drops this process's own fcntl locks on it. StoreError (one line) when the lock cannot be tested
    at all (no fcntl locks on the filesystem, e.g. some NFS mounts; no permission; not a file)."""
    lock = os.path.join(path, "LOCK")
    if not os.path.lexists(lock):
        return False
    fd = None
    try:
        fd = os.open(lock, os.O_RDWR)
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            return True
        raise StoreError(f"--persistent_path store {path}: cannot take a write lock on {lock} as OneFlow does "
                         f"({e.strerror or e}): the store needs a local filesystem with fcntl locks that this "
                         f"user can write") from None
    finally:
        if fd is not None:
            os.close(fd)


TRAIN_FIX = "use the optimizer and --embedding_vec_size that wrote it, or a fresh --persistent_path"


def check_store(paths, key_size, value_size, what, fix=TRAIN_FIX, writing=True):
    """StoreError (one line) if an existing rank directory was written with another key or value
    size (OneFlow would LOG(FATAL) at model build: InitOrCheckMetaValue in persistent_table.cpp) or
    another process holds it (its LOCK: PosixFileLockGuard PCHECKs F_SETLK). `what` says what this
    run's value is made of and `fix` what to do about another value size, for the message. The one
    guard of every entry point that opens a store: for writing (training, GPU predictions: before
    the model is built, agreed_error making every rank stop together) and, without the lock test
    (OneFlow's read-only table takes no lock), for reading (read_rows: the converter, CPU loads)."""
    for path in paths:
        if not os.path.isdir(path):
            continue
        have_key, have_value = read_size(path, "KEY_SIZE"), read_size(path, "VALUE_SIZE")
        if have_key is not None and have_key != key_size:
            raise StoreError(f"--persistent_path store {path} holds {have_key}-byte keys, this run uses {key_size} "
                             f"(--one_embedding_key_type): use the key type that wrote it or a fresh --persistent_path")
        if have_value is not None and have_value != value_size:
            raise StoreError(f"--persistent_path store {path} holds {have_value}-byte values "
                             f"({have_value // 4} floats), this run needs {value_size} ({what}): {fix}")
        if writing and lock_held(path):
            raise StoreError(f"--persistent_path store {path} is in use by another process (it holds {path}/LOCK): "
                             f"stop that run or use another --persistent_path")


def agreed_error(error, placement):
    """Collective: the error (one line) of the lowest rank that has one, on every rank, else None.
    For checks each rank makes on its own (its store directory may be on its node only): every
    rank then stops together, and rank 0 prints the one line, instead of the failing rank stopping
    while the others wait for it in a collective."""
    world = flow.env.get_world_size()
    if world == 1:
        return error
    rank = flow.env.get_rank()
    data = (error or "").encode()
    mine = np.zeros(world, np.float64)
    mine[rank] = len(data) + 1 if error else 0
    sizes = _sum_over_ranks(mine, placement)
    failed = np.flatnonzero(sizes)
    if not len(failed):
        return None
    first = int(failed[0])
    n = int(sizes[first]) - 1
    local = np.frombuffer(data, np.uint8).astype(np.int32) if rank == first else np.zeros(n, np.int32)
    return _sum_over_ranks(local, placement).astype(np.uint8).tobytes().decode()


def _sum_over_ranks(array, placement):
    """The elementwise sum of every rank's NumPy array (same shape), on every rank."""
    return flow.tensor(array).to_global(placement=placement, sbp=flow.sbp.partial_sum).to_global(
        sbp=flow.sbp.broadcast).to_local().numpy()


def checkpoint_snapshot(path):
    """The OneEmbedding snapshot a checkpoint names (its state dict's OneEmbeddingSnapshot), or None
    (a self-contained checkpoint). Reads the checkpoint's weights on this process: a store
    checkpoint holds only the MLPs'."""
    for key, value in flow.load(path).items():
        if key.split(".")[-1] == "OneEmbeddingSnapshot":
            return value
    return None


def snapshot_error(persistent_path, snapshot, world_size, rank):
    """missing_snapshot of this rank's directory of the store: checked before a model is built on
    it, since OneFlow creates the directory (RecursiveCreateDirectory in persistent_table.cpp) and
    an empty store in it when it opens a path that has none."""
    return missing_snapshot(rank_paths(persistent_path, world_size)[rank], snapshot, world_size) if snapshot else None


def found_snapshot_error(found, persistent_path, placement):
    """Collective, before a CUDA model is built: the one line of a checkpoint (found: what
    dlrm.checkpoint.locate_checkpoint found, the same on every rank) whose OneEmbedding snapshot is
    not in this run's store on some rank (e.g. a resume on another GPU count), else None. Rank 0
    reads the snapshot's name from the checkpoint; each rank checks its own directory."""
    from dlrm.distributed import broadcast_json

    if not found or found.get("error"):
        return None  # the loader reports it
    rank, world = flow.env.get_rank(), flow.env.get_world_size()
    snapshot = broadcast_json(checkpoint_snapshot(found["path"]) if rank == 0 else None, placement)
    return agreed_error(snapshot_error(persistent_path, snapshot, world, rank), placement)


def snapshot_list(path, snapshot):
    return os.path.join(path, "snapshots", snapshot, "LIST")


def missing_snapshot(path, snapshot, world_size):
    """None if <path>/snapshots/<snapshot>/LIST exists, else one line naming it (and, if the root
    holds a store of another world size, how to convert it)."""
    if os.path.isfile(snapshot_list(path, snapshot)):
        return None
    root = os.path.dirname(path)
    others = sorted({d.split("-")[1] for d in (os.listdir(root) if os.path.isdir(root) else [])
                     if "-" in d and d.split("-")[1].isdigit() and d.split("-")[1] != str(world_size)})
    hint = (f"; {root} holds a store of {', '.join(others)} ranks: reshard it with tools/convert_checkpoint.py "
            f"--world_size {world_size}" if others else
            "; same --persistent_path (and node-local disks) as the run that wrote the checkpoint?")
    return f"OneEmbedding snapshot {snapshot!r} not found: no {snapshot_list(path, snapshot)}{hint}"


def store_layout(paths):
    """(key dtype, floats per value) of an existing store, from its first rank's KEY_SIZE and VALUE_SIZE."""
    key_size, value_size = read_size(paths[0], "KEY_SIZE"), read_size(paths[0], "VALUE_SIZE")
    if key_size is None or value_size is None:
        raise StoreError(f"{paths[0]}: not a OneEmbedding store (no KEY_SIZE / VALUE_SIZE)")
    if key_size not in KEY_DTYPES:
        raise StoreError(f"{paths[0]}/KEY_SIZE is {key_size}: not a 4- or 8-byte key")
    return KEY_DTYPES[key_size], value_size // np.dtype(VALUE_DTYPE).itemsize


def read_rows(paths, snapshot):
    """(keys, values) of a snapshot of the store at `paths` (every rank's), keys sorted."""
    for path in paths:
        error = missing_snapshot(path, snapshot, len(paths))
        if error:
            raise StoreError(error)
    key_dtype, dim = store_layout(paths)
    # every rank's directory must be of the same store: OneFlow's reader LOG(FATAL)s on another size
    check_store(paths, np.dtype(key_dtype).itemsize, dim * np.dtype(VALUE_DTYPE).itemsize,
                f"as {paths[0]}", fix="the ranks' directories are of different stores", writing=False)
    keys, values = [np.zeros(0, key_dtype)], [np.zeros((0, dim), VALUE_DTYPE)]
    with flow.one_embedding.make_persistent_table_reader(paths, snapshot, flow_dtype(key_dtype), flow.float,
                                                         dim) as reader:
        for k, v in reader:
            keys.append(k)
            values.append(v)
    keys, values = np.concatenate(keys), np.concatenate(values)
    order = np.argsort(keys, kind="stable")
    return keys[order], values[order]


def write_rows(paths, snapshot, keys, values):
    """A store of len(paths) ranks holding `keys` -> `values` in snapshot `snapshot`, written by
    OneFlow's writer (which deals the keys to the ranks with ShardingHash, as the GPU runs do)."""
    with flow.one_embedding.make_persistent_table_writer(paths, snapshot, flow_dtype(keys.dtype), flow.float,
                                                         values.shape[1]) as writer:
        writer.write(np.ascontiguousarray(keys), np.ascontiguousarray(values, dtype=VALUE_DTYPE))


def flow_dtype(np_dtype):
    return {np.dtype(np.int32): flow.int32, np.dtype(np.int64): flow.int64}[np.dtype(np_dtype)]


# ----------------------------------------------------------------------------- CPU table <-> store rows
# A GPU run keys a row by the id itself; a CPU run (model.LocalEmbedding) keeps table j's rows at
# (id mod size_j) + offset_j. The ids that can occur in table j: all of
# [offset_j, offset_j + size_j) with vocabulary ids, else those present in column j of the splits.
def table_offsets(table_sizes):
    return np.concatenate([[0], np.cumsum(table_sizes)[:-1]]).astype(np.int64)


def cpu_rows(ids, j, table_sizes):
    """The CPU table's rows of table j's ids (LocalEmbedding.forward's map, in NumPy)."""
    size = int(table_sizes[j])
    return np.mod(ids.astype(np.int64), size) + table_offsets(table_sizes)[j]


def dataset_ids(data_dir, table_sizes):
    """[ids of table j] that the dataset at data_dir can hold, each sorted and distinct."""
    from dlrm import schema
    from dlrm.data import SPARSE_COLUMNS, split_files
    info = schema.read_dataset_info(data_dir) or {}
    offsets = table_offsets(table_sizes)
    if info.get("id_mode") == "vocab":
        return [np.arange(o, o + n, dtype=np.int64) for o, n in zip(offsets, table_sizes)]
    import pyarrow.parquet as pq
    seen = [[] for _ in SPARSE_COLUMNS]
    for split in ("train", "test", "val"):
        if not os.path.isdir(os.path.join(data_dir, split)):
            continue
        for path in split_files(data_dir, split):
            table = pq.read_table(path, columns=SPARSE_COLUMNS)
            for j, c in enumerate(SPARSE_COLUMNS):
                seen[j].append(np.unique(table.column(c).to_numpy()))
    return [np.unique(np.concatenate(s)).astype(np.int64) if s else np.zeros(0, np.int64) for s in seen]


def table_to_store(rows, ids_per_table, table_sizes):
    """(keys, values) of a CPU table: rows[r] (the embedding and its optimizer state side by side)
    for every id of every table. An id in two tables keeps its first table's row (the GPU has one)."""
    keys = np.concatenate(ids_per_table)
    index = np.concatenate([cpu_rows(ids, j, table_sizes) for j, ids in enumerate(ids_per_table)])
    keys, first = np.unique(keys, return_index=True)
    return keys, rows[index[first]]


def store_to_table(keys, values, ids_per_table, table_sizes, rows):
    """rows (a CPU table, modified in place) with each id's store row put at its CPU row; rows of ids
    the store lacks (never looked up on the GPU) are kept. Returns the number of rows set.
    keys must be sorted (read_rows)."""
    done = 0
    for j, ids in enumerate(ids_per_table):
        at = np.minimum(np.searchsorted(keys, ids), max(len(keys) - 1, 0))
        found = (keys[at] == ids) if len(keys) else np.zeros(len(ids), bool)
        target = cpu_rows(ids[found], j, table_sizes)
        target, first = np.unique(target, return_index=True)  # ids sharing a CPU row: the smallest id's
        rows[target] = values[at[found][first], :rows.shape[1]]
        done += len(target)
    return done
