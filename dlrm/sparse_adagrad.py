"""Adagrad on only the CPU embedding rows a batch touches (OneFlow 0.9.0 has no IndexedSlices Adagrad).

A training step with `--optimizer adagrad` on CPU:
1. every rank maps the global batch's ids to table rows and takes their sorted unique rows
   (np.unique: the same on every rank) and each id's position among them;
2. the graph gets those rows' values (gathered from the table: slots = global batch x 26, the unused
   ones padded) plus a zero parameter, the probe, and looks the batch's embeddings up in that small
   matrix. The probe's gradient is the loss's gradient w.r.t. each unique row, summed over the
   batch and over the ranks (the graph's all-reduce), as the dense update's gradient rows are; SGD at
   learning rate 1 turns the zero probe into minus that gradient;
3. each rank reads it and applies OneFlow's Adagrad (its AdagradUpdateFunctor: sum += g*g;
   w -= lr / (sqrt(sum) + eps) * g) to those rows of its replica of the table and of the sum, in
   NumPy, and zeroes the probe. Rows outside the batch have a zero gradient, which leaves both
   unchanged in the dense update too.
The table is the module's parameter (`embedding.weight`, viewed through NumPy without a copy:
the eval graph and checkpoints see the update); the sums are saved with the graph's variables
under SUM_KEY, the dense update's name for them. Every step reads and writes O(batch) rows whatever the table's size.
"""
import numpy as np
import oneflow as flow
import oneflow.nn as nn

from dlrm.checkpoint import GRAPH_MODULE, STEP_KEY, TABLE_KEY
from dlrm.distributed import cpu_placement, gather_to_all, to_global
from dlrm.graphs import TrainGraph, make_grad_scaler
from dlrm.schedule import lr_at, make_lr_scheduler
from dlrm.schema import NUM_SPARSE

ADAGRAD_EPS = 1e-10  # flow.optim.Adagrad's default eps, which the dense parameters' optimizer uses
# The name the train graph gives the table's Adagrad sums when it updates the whole table
# (--dense_embedding_update) and that checkpoint conversion uses: checkpoints of either update load
# into the other.
SUM_KEY = f"{GRAPH_MODULE}{TABLE_KEY}-sum"


class RowGradientProbe(nn.Module):
    """(slots, D) zeros added to the gathered rows: its gradient is theirs."""

    def __init__(self, slots, dim):
        super().__init__()
        self.weight = nn.Parameter(flow.zeros(slots, dim))


class SparseAdagradTrainGraph(TrainGraph):
    """The training step of a CPU run with Adagrad: called like TrainGraph (labels, dense, sparse as
    global split tensors), it updates the MLPs in the graph and the embedding rows around it."""

    def __init__(self, module, schedule, global_batch):
        placement = cpu_placement()
        dense_opt = flow.optim.Adagrad(module.dense_parameters(), lr=schedule.learning_rate, eps=ADAGRAD_EPS)
        probe = RowGradientProbe(global_batch * NUM_SPARSE, module.embedding.weight.shape[1])
        probe.to_global(placement, flow.sbp.broadcast)
        probe_opt = flow.optim.SGD(probe.parameters(), lr=1.0)
        super().__init__(module, [(dense_opt, make_lr_scheduler(dense_opt, schedule), False),
                                  (probe_opt, None, False)], "cpu", False, make_grad_scaler("static"))
        self.probe = probe
        # the eager tensors, for the NumPy side (outside build() the graph's attributes are blocks)
        self.eager = {"embedding": module.embedding, "probe": probe.weight}
        self.placement = placement
        self.schedule = schedule
        self.sum = np.zeros(tuple(module.embedding.weight.shape), dtype=np.float32)
        self.steps_done = 0

    def build(self, labels, values, inverse, dense):
        table = values + self.probe.weight
        emb = flow.index_select(table, 0, inverse.reshape(-1)).reshape(inverse.shape[0], NUM_SPARSE, -1)
        logits = self.module.head(dense, emb)
        loss = self.loss_fn(logits, labels)
        loss.backward()
        return loss

    def table(self):
        """This rank's replica of the embedding table, as a NumPy view (no copy)."""
        return self.eager["embedding"].weight.to_local().numpy()

    def __call__(self, labels, dense, sparse):
        rows = self.eager["embedding"].row_index(gather_to_all(sparse).numpy())
        unique, inverse = np.unique(rows, return_inverse=True)
        slots = self.eager["probe"].shape[0]
        padded = np.zeros(slots, dtype=np.int64)
        padded[:len(unique)] = unique
        values = flow.from_numpy(self.table()[padded]).to_global(self.placement, flow.sbp.broadcast)
        local = sparse.to_local().shape[0]
        rank = flow.env.get_rank()
        inverse = inverse.reshape(rows.shape)[rank * local:(rank + 1) * local].astype(np.int64)
        loss = super().__call__(labels, values, to_global(np.ascontiguousarray(inverse), self.placement), dense)
        self.steps_done += 1
        probe = self.eager["probe"].to_local().numpy()  # waits for the step; minus the rows' gradient
        grad = -probe[:len(unique)]
        probe[:] = 0.0
        self.apply(unique, grad, lr_at(self.steps_done, self.schedule))
        return loss

    def apply(self, rows, grad, lr):
        """OneFlow's Adagrad update on `rows` (unique) of the table and of the sums, in float32."""
        total = self.sum[rows] + grad * grad
        self.sum[rows] = total
        table = self.table()
        table[rows] = table[rows] - np.float32(lr) / (np.sqrt(total) + np.float32(ADAGRAD_EPS)) * grad

    def host_variables(self):
        """The sums, to be saved with the graph's variables."""
        return {SUM_KEY: flow.from_numpy(self.sum).to_global(self.placement, flow.sbp.broadcast)}

    def load_host_variables(self, state):
        """Take the sums and the step count from loaded graph variables; returns the rest."""
        rest = dict(state)
        if SUM_KEY in rest:
            self.sum[...] = self._whole(rest.pop(SUM_KEY))
        if STEP_KEY in rest:
            self.steps_done = int(self._whole(rest[STEP_KEY]).reshape(-1)[0])
        return rest

    def _whole(self, tensor):
        """A loaded tensor's values on this rank. flow.load(..., global_src_rank=0) places what it reads
        on rank 0 alone (check_point_v2._LoadSingleVariable): every other rank's local part is empty
        until it is broadcast to all ranks."""
        return tensor.to_global(placement=self.placement, sbp=flow.sbp.broadcast).to_local().numpy()
