"""Parquet input for DLRM: dataset checks and a sharded, resumable batch reader.

The dataset is the layout written by tools/criteo1t_parquet.py (and by the original OneFlow
tool): data_dir/{train,test,val}/*.parquet with columns label, I1..I13 (float32) and C1..C26
(int64 or int32 ids).

Sharding: every rank lists the same row groups (from parquet metadata, no data read) and takes
every world_size-th one, so ranks read disjoint data. For training the row-group order is
reshuffled each epoch with (seed, epoch). Each rank's rows form one endless stream (epoch after
epoch) that is cut into full batches only, so batch b of a rank is rows [b*B, (b+1)*B) of that
stream: the reader position after n batches is a pure function of n, which is what makes an
interrupted run resume exactly.
"""
import glob
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq

from dlrm.schema import COLUMNS, DENSE_COLUMNS, LABEL, SPARSE_COLUMNS


class DataError(ValueError):
    """Bad dataset: the message is one line naming the file or directory."""


def split_files(data_dir, split):
    path = os.path.join(data_dir, split)
    if not os.path.isdir(path):
        raise DataError(f"data split not found: {path} (expected parquet files from tools/criteo1t_parquet.py)")
    files = sorted(glob.glob(os.path.join(path, "*.parquet")))
    if not files:
        raise DataError(f"no *.parquet files in {path}")
    return files


def parquet_file(path):
    """pq.ParquetFile(path) (its footer read), or DataError naming the file that is not
    readable parquet (truncated: pyarrow's "Parquet magic bytes not found" names no file)."""
    import pyarrow as pa

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({e}); rewrite the dataset "
                        f"(tools/criteo1t_parquet.py) or restore the file") from None


def check_schema(files, key_type):
    """Every file is readable parquet with all columns, and ids of dtype key_type ('int32'/'int64')."""
    for path in files:
        schema = parquet_file(path).schema_arrow
        missing = [c for c in COLUMNS if c not in schema.names]
        if missing:
            raise DataError(f"{path}: missing columns {', '.join(missing)}")
        for c in SPARSE_COLUMNS:
            dtype = schema.field(c).type.to_pandas_dtype().__name__
            if dtype != key_type:
                raise DataError(
                    f"{path}: column {c} holds {dtype} ids but --one_embedding_key_type is {key_type}; "
                    f"pass --one_embedding_key_type {dtype}"
                )


def list_row_groups(files):
    """[(file, row_group_index, num_rows)] for all files, from metadata only."""
    groups = []
    for path in files:
        meta = parquet_file(path).metadata
        for i in range(meta.num_row_groups):
            n = meta.row_group(i).num_rows
            if n > 0:
                groups.append((path, i, n))
    return groups


def shardable_row_groups(files, world_size):
    """list_row_groups, checked to give every rank at least one row group."""
    groups = list_row_groups(files)
    if len(groups) < world_size:
        raise DataError(
            f"{os.path.dirname(files[0])}: {len(groups)} parquet row groups cannot be shared by "
            f"{world_size} ranks; write more files (--train_files of the preprocessing tool)")
    return groups


def train_segments(groups, rank, world_size, seed, epoch):
    """This rank's share of one training epoch: every world_size-th row group of a per-epoch shuffle.

    Segments are (file, row_group, start_row, stop_row)."""
    order = np.random.default_rng([seed, epoch]).permutation(len(groups))
    return [(path, rg, 0, n) for path, rg, n in (groups[i] for i in order[rank::world_size])]


def eval_slice(groups, rank, world_size):
    """Rows [lo, hi) of the split that a rank evaluates: [r*n//w, (r+1)*n//w), so the slices cover
    every row and differ in size by at most one."""
    total = sum(n for _, _, n in groups)
    return rank * total // world_size, (rank + 1) * total // world_size


def eval_segments(groups, rank, world_size):
    """This rank's contiguous slice of the split (eval_slice) as segments, in file order."""
    lo, hi = eval_slice(groups, rank, world_size)
    segments, first = [], 0
    for path, rg, n in groups:
        start, stop = max(lo - first, 0), min(hi - first, n)
        if start < stop:
            segments.append((path, rg, start, stop))
        first += n
    return segments


def eval_batches_per_rank(groups, batch_size, world_size):
    """Batches every rank runs to evaluate the whole split: the largest slice, the last batch padded."""
    largest_slice = -(-sum(n for _, _, n in groups) // world_size)  # ceil
    return -(-largest_slice // (batch_size // world_size))


class Batch(NamedTuple):
    label: np.ndarray   # [B, 1] float32
    dense: np.ndarray   # [B, 13] float32
    sparse: np.ndarray  # [B, 26] int32/int64 ids
    rows: int           # real rows; the rest (eval's last batches) is padding (zeros, a real row's ids)


def decode_segment(segment):
    """Read and convert one row-group slice (file, row_group, start, stop) into a Batch.

    Runs on the reader's worker threads: pyarrow decodes and numpy copies without the GIL."""
    path, rg, start, stop = segment
    return table_to_batch(pq.ParquetFile(path).read_row_group(rg, columns=COLUMNS, use_threads=False)
                          .slice(start, stop - start))


COPY_BLOCK_ROWS = 8192  # rows per block when columns are interleaved into a batch array


def columns_into(out, columns):
    """out[:, j] = columns[j], a block of rows at a time: the block of `out` stays in cache while every
    column is written into it (measured 1.8x faster than whole-column strided writes)."""
    for lo in range(0, len(out), COPY_BLOCK_ROWS):
        block = out[lo:lo + COPY_BLOCK_ROWS]
        for j, col in enumerate(columns):
            block[:, j] = col[lo:lo + COPY_BLOCK_ROWS]
    return out


def table_to_batch(table):
    """A pyarrow table (or record batch) with the schema's columns -> a Batch of all its rows."""
    n = table.num_rows
    dense = columns_into(np.empty((n, len(DENSE_COLUMNS)), dtype=np.float32),
                         [table.column(c).to_numpy() for c in DENSE_COLUMNS])
    ids = [table.column(c).to_numpy() for c in SPARSE_COLUMNS]
    sparse = columns_into(np.empty((n, len(ids)), dtype=ids[0].dtype), ids)
    label = table.column(LABEL).to_numpy().astype(np.float32, copy=False).reshape(-1, 1)
    return Batch(label, dense, sparse, n)


def concat(parts):
    if len(parts) == 1:
        return parts[0]
    return Batch(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("label", "dense", "sparse")),
                 sum(p.rows for p in parts))


def take(parts, n):
    """The first n rows of a list of Batches (a view when they lie in one), removed from the list."""
    out, need = [], n
    while need:
        head = parts[0]
        if head.rows <= need:
            out.append(parts.pop(0))
            need -= head.rows
        else:
            out.append(Batch(head.label[:need], head.dense[:need], head.sparse[:need], need))
            parts[0] = Batch(head.label[need:], head.dense[need:], head.sparse[need:], head.rows - need)
            need = 0
    return concat(out)


def padded(batch, size, ids):
    """batch with rows appended up to size rows (rows keeps the real count): zero label and dense
    features, and the ids `ids` (a real row's: OneEmbedding inserts an id it does not hold into its
    store, and id 0 need not be one the dataset has)."""
    pad = size - len(batch.label)
    label, dense = (np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)]) for a in (batch.label, batch.dense))
    return Batch(label, dense, np.concatenate([batch.sparse, np.broadcast_to(ids.astype(batch.sparse.dtype),
                                                                              (pad, len(ids)))]), batch.rows)


def empty_batch(id_dtype):
    return Batch(np.zeros((0, 1), np.float32), np.zeros((0, len(DENSE_COLUMNS)), np.float32),
                 np.zeros((0, len(SPARSE_COLUMNS)), id_dtype), 0)


def first_row_ids(groups):
    """The ids of the first row of a split's row groups (the eval padding's), in the split's id dtype."""
    path, rg, _ = groups[0]
    first = next(pq.ParquetFile(path).iter_batches(batch_size=1, row_groups=[rg], columns=SPARSE_COLUMNS))
    return np.array([first.column(j).to_numpy()[0] for j in range(len(SPARSE_COLUMNS))])


def fresh_plan(world_size):
    """A run's reading plan from its start: whole epochs of world_size-way sharding (reader_stream)."""
    return {"base_step": 0, "world_size": world_size, "first_epoch": 0, "prefix": None}


def reader_stream(groups, plan, rank, seed, train):
    """(epoch, segment) of a rank's rows in reading order. Training: the plan's prefix for this rank
    (rows of earlier epochs that an interrupted run with other ranks or batches did not read,
    tagged first_epoch - 1; segments as [row group index, start, stop]), then every epoch from
    first_epoch on, endless. Evaluation: this rank's slice of the split."""
    if not train:
        for segment in eval_segments(groups, rank, plan["world_size"]):
            yield 0, segment
        return
    if plan["prefix"]:
        for g, start, stop in plan["prefix"][rank]:
            yield plan["first_epoch"] - 1, (groups[g][0], groups[g][1], start, stop)
    epoch = plan["first_epoch"]
    while True:
        segments = train_segments(groups, rank, plan["world_size"], seed, epoch)
        if not segments:
            return
        for segment in segments:
            yield epoch, segment
        epoch += 1


def stream_position(groups, plan, rank, seed, train, skip):
    """(epoch, segment index within the epoch, row within it) after `skip` rows of a rank's stream."""
    last, index = None, 0
    for epoch, (_, _, start, stop) in reader_stream(groups, plan, rank, seed, train):
        index = index + 1 if epoch == last else 0
        last = epoch
        if skip < stop - start:
            return epoch, index, skip
        skip -= stop - start
    return (last + 1 if last is not None else 0), 0, 0


def rest_of_stream(groups, plan, rank, seed, train, skip):
    """reader_stream after its first `skip` rows (the segment they end in cut)."""
    for epoch, (path, rg, start, stop) in reader_stream(groups, plan, rank, seed, train):
        if skip >= stop - start:
            skip -= stop - start
            continue
        yield epoch, (path, rg, start + skip, stop)
        skip = 0


def resume_plan(groups, seed, plan, batch_per_rank, step, world_size):
    """The plan of a run resumed after `step` steps of a run that read with `plan` and
    batch_per_rank, on world_size processes: the rows the interrupted run had not read of every
    epoch up to the newest one any of its ranks had started, dealt to the new ranks in contiguous
    equal parts (its prefix), then whole epochs. Every row of those epochs is read exactly once
    across the interruption; the batch size may differ too."""
    skip = (step - plan["base_step"]) * batch_per_rank
    now = max(stream_position(groups, plan, r, seed, True, skip)[0] for r in range(plan["world_size"]))
    index = {(path, rg): g for g, (path, rg, _) in enumerate(groups)}
    left = []  # [row group index, start, stop] not read, every old rank's in turn
    for r in range(plan["world_size"]):
        for epoch, (path, rg, start, stop) in rest_of_stream(groups, plan, r, seed, True, skip):
            if epoch > now:
                break
            left.append([index[(path, rg)], start, stop])
    total = sum(stop - start for _, start, stop in left)
    bounds = [r * total // world_size for r in range(world_size + 1)]
    prefix, first = [[] for _ in range(world_size)], 0
    for g, start, stop in left:  # cut the list at the bounds
        for r in range(world_size):
            lo, hi = max(start, bounds[r] - first + start), min(stop, bounds[r + 1] - first + start)
            if lo < hi:
                prefix[r].append([g, lo, hi])
        first += stop - start
    return {"base_step": step, "world_size": world_size, "first_epoch": now + 1, "prefix": prefix}


class BatchReader:
    """Per-rank Batches from a shard of a split's row groups (list_row_groups).

    train=True: endless full batches, row groups reshuffled per epoch; start_batch skips
    already-consumed batches without reading them; `plan` (reader_stream) is how a run resumed on
    another number of processes or batch size reads the rest of the interrupted epoch first.
    train=False: one pass over this rank's slice of the split, the last batch padded (Batch.rows
    says how many rows are real); with
    max_batches, exactly that many batches (padding batches after the data, so every rank runs
    the same number of steps), or the first max_batches if the slice holds more.
    `workers` threads decode row groups ahead in parallel (pyarrow and numpy release the GIL); a
    background thread cuts them into batches in order, so the batches do not depend on `workers`.
    """

    def __init__(self, groups, batch_size, rank, world_size, train, seed=1234,
                 start_batch=0, max_batches=None, prefetch=4, workers=1, plan=None):
        self.groups = list(groups)  # [(file, row_group, rows)]: list_row_groups / shardable_row_groups
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.plan = plan or fresh_plan(world_size)  # see reader_stream
        self.train, self.seed = train, seed
        self.start_batch, self.max_batches = start_batch, max_batches
        self.workers = max(1, workers)
        self._queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, daemon=True)
        self._thread.start()

    def position(self, batches_consumed, rank=None):
        """(epoch, segment index within the epoch, row within it) where a rank's next batch starts
        (epoch first_epoch - 1: the plan's prefix)."""
        rank = self.rank if rank is None else rank
        return stream_position(self.groups, self.plan, rank, self.seed, self.train,
                               (batches_consumed - self.plan["base_step"]) * self.batch_size)

    def _segments_from_start(self):
        """(file, row_group, start, stop) in reading order, from where batch start_batch starts."""
        skip = (self.start_batch - self.plan["base_step"]) * self.batch_size
        for _, segment in rest_of_stream(self.groups, self.plan, self.rank, self.seed, self.train, skip):
            yield segment

    def _decoded(self):
        """decode_segment of each segment in order, `workers` of them in flight."""
        if self.workers == 1:
            yield from map(decode_segment, self._segments_from_start())
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="dlrm-reader") as pool:
            pending = queue.deque()
            for segment in self._segments_from_start():
                pending.append(pool.submit(decode_segment, segment))
                if len(pending) >= 2 * self.workers:
                    yield pending.popleft().result()
                    if self._stop.is_set():
                        return
            while pending:
                yield pending.popleft().result()

    def _batches(self):
        B, emitted = self.batch_size, 0
        parts, have = [], 0
        for chunk in self._decoded():
            parts.append(chunk)
            have += chunk.rows
            while have >= B:
                if self.max_batches is not None and emitted >= self.max_batches:
                    return
                yield take(parts, B)
                have, emitted = have - B, emitted + 1
        if self.train:
            return  # (only an empty shard ends a training stream)
        # Evaluation covers every row: the tail, zero-padded, then empty batches up to max_batches.
        tail = concat(parts) if parts else None
        ids = first_row_ids(self.groups)
        while (emitted < self.max_batches) if self.max_batches is not None else tail is not None:
            yield padded(tail or empty_batch(ids.dtype), B, ids)
            tail, emitted = None, emitted + 1

    def _produce(self):
        try:
            for batch in self._batches():
                while not self._stop.is_set():
                    try:
                        self._queue.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(StopIteration())
        except BaseException as e:  # surface reader errors in the training loop
            self._queue.put(e)

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if isinstance(item, StopIteration):
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
