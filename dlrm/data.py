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


def check_schema(files, key_type):
    """Every file has all columns, and ids of dtype key_type ('int32'/'int64')."""
    for path in files:
        schema = pq.read_schema(path)
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
        meta = pq.ParquetFile(path).metadata
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


def eval_segments(groups, rank, world_size):
    """This rank's equal, contiguous slice of the split in file order (so every rank gets the same
    number of eval batches and the union is the head of the split)."""
    per_rank = sum(n for _, _, n in groups) // world_size
    lo, hi = rank * per_rank, (rank + 1) * per_rank
    segments, first = [], 0
    for path, rg, n in groups:
        start, stop = max(lo - first, 0), min(hi - first, n)
        if start < stop:
            segments.append((path, rg, start, stop))
        first += n
    return segments


class BatchReader:
    """Full per-rank batches (label[B,1] f32, dense[B,13] f32, sparse[B,26] ids) from a shard
    of a split's row groups (list_row_groups).

    train=True: endless, row groups reshuffled per epoch; start_batch skips already-consumed
    batches without reading them. train=False: one pass over this rank's contiguous slice of the
    split, at most max_batches.
    A background thread decodes ahead (pyarrow releases the GIL) so the step never waits on I/O.
    """

    def __init__(self, groups, batch_size, rank, world_size, train, seed=1234,
                 start_batch=0, max_batches=None, prefetch=4):
        self.groups = list(groups)  # [(file, row_group, rows)]: list_row_groups / shardable_row_groups
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.train, self.seed = train, seed
        self.start_batch, self.max_batches = start_batch, max_batches
        self._queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, daemon=True)
        self._thread.start()

    def segments(self, epoch, rank=None):
        rank = self.rank if rank is None else rank
        if self.train:
            return train_segments(self.groups, rank, self.world_size, self.seed, epoch)
        return eval_segments(self.groups, rank, self.world_size) if epoch == 0 else []

    def position(self, batches_consumed, rank=None):
        """(epoch, segment index within the epoch, row within it) where a rank's next batch starts."""
        skip = batches_consumed * self.batch_size
        epoch = 0
        while True:
            segments = self.segments(epoch, rank)
            for i, (_, _, start, stop) in enumerate(segments):
                if skip < stop - start:
                    return epoch, i, skip
                skip -= stop - start
            if not segments:
                return epoch, 0, 0
            epoch += 1

    def _chunks(self):
        """Tables of consecutive segments, starting where batch start_batch starts."""
        epoch, first, offset = self.position(self.start_batch)
        while True:
            segments = self.segments(epoch)
            if not segments:
                return
            for path, rg, start, stop in segments[first:]:
                table = pq.ParquetFile(path).read_row_group(rg, columns=COLUMNS)
                yield table.slice(start + offset, stop - start - offset)
                offset = 0
            epoch, first = epoch + 1, 0

    def _batches(self):
        B = self.batch_size
        pending, have, emitted = [], 0, 0
        for table in self._chunks():
            pending.append(table)
            have += table.num_rows
            while have >= B:
                if self.max_batches is not None and emitted >= self.max_batches:
                    return
                yield self._take(pending, B)
                have -= B
                emitted += 1
        # A tail shorter than a batch is never emitted (as the original reader).

    @staticmethod
    def _take(pending, n):
        """Pop the first n rows from the list of tables and convert them to arrays."""
        parts, need = [], n
        while need:
            t = pending[0]
            if t.num_rows <= need:
                parts.append(pending.pop(0))
                need -= t.num_rows
            else:
                parts.append(t.slice(0, need))
                pending[0] = t.slice(need)
                need = 0
        cols = {c: np.concatenate([p.column(c).to_numpy() for p in parts]) for c in COLUMNS}
        label = cols[LABEL].astype(np.float32, copy=False).reshape(-1, 1)
        dense = np.stack([cols[c] for c in DENSE_COLUMNS], axis=1).astype(np.float32, copy=False)
        sparse = np.stack([cols[c] for c in SPARSE_COLUMNS], axis=1)
        return label, dense, sparse

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
