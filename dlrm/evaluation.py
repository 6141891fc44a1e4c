"""Evaluation: every rank scores its slice of the eval split, rank 0 computes one AUC over all.

The eval batches are read once and kept in memory for the later evaluations (as the original
does) when this rank's share fits in EVAL_CACHE_FRACTION of the host's memory; else re-read.
"""
import numpy as np
import oneflow as flow
import psutil

from dlrm.data import BatchReader, eval_slice
from dlrm.distributed import broadcast_float, gather_to_all, to_global
from dlrm.schema import NUM_DENSE, NUM_SPARSE


def roc_auc(labels, preds):
    """ROC AUC with ties averaged (OneFlow's CPU op; equals sklearn.metrics.roc_auc_score)."""
    return float(flow.roc_auc_score(labels.reshape(-1), preds.reshape(-1)).numpy()[0])


EVAL_CACHE_FRACTION = 0.25


class EvalSet:
    """This rank's eval batches (dlrm.data.Batch), read on first use and cached when they fit."""

    def __init__(self, data, rank, world_size, local_world_size=1):
        self.data, self.rank, self.world_size = data, rank, world_size
        rows = sum(n for *_, n in data.eval_groups) / world_size
        row_bytes = 4 * (1 + NUM_DENSE) + 8 * NUM_SPARSE  # label, dense, ids at most int64
        self.cache_enabled = rows * row_bytes * local_world_size < EVAL_CACHE_FRACTION * psutil.virtual_memory().total
        self.cached = None

    def __iter__(self):
        if self.cached is not None:
            return iter(self.cached)
        reader = BatchReader(self.data.eval_groups, self.data.eval_batch_per_rank, self.rank, self.world_size,
                             train=False, max_batches=self.data.eval_batches, workers=self.data.reader_threads)
        return self._read(reader)

    def _read(self, reader):
        batches = []
        try:
            for batch in reader:
                if self.cache_enabled:
                    batches.append(batch)
                yield batch
        finally:
            reader.close()
        if self.cache_enabled:
            self.cached = batches


def real_rows_mask(data, world_size, num_batches):
    """Which rows of the gathered eval batches (batch by batch, each rank's part in rank order) are
    data, not padding: every rank knows every rank's slice size, so no exchange is needed."""
    B = data.eval_batch_per_rank
    offsets = np.arange(B)
    return np.concatenate([offsets < size - i * B for i in range(num_batches)
                           for size in slice_sizes(data.eval_groups, world_size)])


def slice_sizes(groups, world_size):
    """Rows of each rank's eval_slice of a split's row groups."""
    return [hi - lo for lo, hi in (eval_slice(groups, r, world_size) for r in range(world_size))]


def log_loss(labels, preds, eps=1e-7):
    """Mean binary cross-entropy of probabilities (clipped to [eps, 1 - eps], as scikit-learn's)."""
    p = np.clip(np.asarray(preds, dtype=np.float64).reshape(-1), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def evaluate(eval_graph, module, eval_set, placement):
    """(AUC, log loss, samples) over the eval batches of every rank (padding rows left out), on every rank."""
    rank, world = flow.env.get_rank(), flow.env.get_world_size()
    module.eval()
    gathered = []  # [label, prediction] of every rank's rows, one collective per batch
    for batch in eval_set:
        pred = eval_graph(to_global(batch.dense, placement), to_global(batch.sparse, placement))
        gathered.append(gather_to_all(flow.cat([to_global(batch.label, placement), pred], dim=1)).numpy())
    module.train()
    keep = real_rows_mask(eval_set.data, world, len(gathered))
    auc = loss = 0.0
    if rank == 0:
        both = np.concatenate(gathered)[keep]
        auc = roc_auc(flow.tensor(both[:, 0].copy()), flow.tensor(both[:, 1].copy()))
        loss = log_loss(both[:, 0], both[:, 1])
    flow.comm.barrier()
    return broadcast_float(auc, placement), broadcast_float(loss, placement), int(keep.sum())
