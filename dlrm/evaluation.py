"""Evaluation: every rank scores its slice of the eval split, rank 0 computes one AUC over all."""
import oneflow as flow

from dlrm.data import BatchReader
from dlrm.distributed import broadcast_float, gather_to_all, to_global


def roc_auc(labels, preds):
    """ROC AUC with ties averaged (OneFlow's CPU op; equals sklearn.metrics.roc_auc_score)."""
    return float(flow.roc_auc_score(labels.reshape(-1), preds.reshape(-1)).numpy()[0])


def evaluate(eval_graph, module, data, placement):
    """(AUC, samples) over data.eval_batches batches of the eval split, on every rank."""
    rank, world = flow.env.get_rank(), flow.env.get_world_size()
    module.eval()
    reader = BatchReader(data.eval_groups, data.eval_batch_per_rank, rank, world, train=False,
                         max_batches=data.eval_batches)
    labels, preds = [], []
    try:
        for label, dense, sparse in reader:
            pred = eval_graph(to_global(dense, placement), to_global(sparse, placement))
            preds.append(gather_to_all(pred))
            labels.append(gather_to_all(to_global(label, placement)))
    finally:
        reader.close()
    module.train()
    auc = roc_auc(flow.cat(labels), flow.cat(preds)) if rank == 0 else 0.0
    flow.comm.barrier()
    return broadcast_float(auc, placement), sum(len(x) for x in labels)
