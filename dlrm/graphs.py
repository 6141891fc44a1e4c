"""The two compiled OneFlow graphs (nn.Graph): a training step and an evaluation forward pass.

Inputs arrive as global CPU tensors (split over ranks); the graphs move them to the device and
return the loss / predictions on the CPU.
"""
import oneflow as flow

from dlrm.optimizers import OPTIMIZERS
from dlrm.schedule import make_lr_scheduler
from dlrm.threads import lead_launcher


def make_grad_scaler(policy):
    """AMP loss scaling: the original's static 1024, or dynamic."""
    if policy == "static":
        return flow.amp.StaticGradScaler(1024)
    return flow.amp.GradScaler(init_scale=2 ** 30, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000)


def make_optimizers(module, optimizer, learning_rate):
    """[(optimizer, is_sparse)] for an OptimizerConfig: one optimizer for everything, or on CPU with a
    sparse update, a second one of the same kind for the embedding table alone, updated as
    IndexedSlices (only the rows a batch touches are read, updated and communicated)."""
    make = OPTIMIZERS[optimizer.name].make
    if not optimizer.sparse_embedding:
        return [(make(module.parameters(), lr=learning_rate), False)]
    return [(make(module.dense_parameters(), lr=learning_rate), False),
            (make(module.embedding_parameters(), lr=learning_rate), True)]


def make_train_graph(module, cfg):
    """The training step for a RunConfig (see build_train_graph)."""
    return build_train_graph(module, cfg.optimizer, cfg.schedule, cfg.device, cfg.amp, cfg.loss_scale_policy,
                             cfg.data.train_batch_size)


def build_train_graph(module, optimizer, schedule, device, amp=False, loss_scale_policy="static", global_batch=None):
    """The training step: the optimizers of an OptimizerConfig with the LR schedule of a
    ScheduleConfig, on `device`, with AMP and its loss scaling when asked. Sparse Adagrad (CPU)
    updates the embedding rows outside the graph (dlrm.sparse_adagrad) and needs the global batch."""
    if optimizer.sparse_embedding and optimizer.name == "adagrad":
        from dlrm.sparse_adagrad import SparseAdagradTrainGraph  # it builds on this module
        return SparseAdagradTrainGraph(module, schedule, global_batch)
    optimizers = [(opt, make_lr_scheduler(opt, schedule), sparse)
                  for opt, sparse in make_optimizers(module, optimizer, schedule.learning_rate)]
    return TrainGraph(module, optimizers, device, amp, make_grad_scaler(loss_scale_policy))


class Graph(flow.nn.Graph):
    """nn.Graph that, before the first graph run of a CPU process, puts OneFlow's job-launcher
    thread ahead of the process's other threads (dlrm.threads.lead_launcher: without it OneFlow
    0.9.0 races itself on short steps and segfaults). GPU processes are left as OneFlow runs them
    (not measured here)."""
    launcher = None  # lead_launcher's (thread id, the others' policy) once done; one per process

    def __call__(self, *args):
        if Graph.launcher is None and self.device == "cpu":
            Graph.launcher = lead_launcher()
        return super().__call__(*args)


class TrainGraph(Graph):
    """optimizers: [(optimizer, lr_scheduler, is_sparse)]."""

    def __init__(self, module, optimizers, device, amp, grad_scaler):
        super().__init__()
        self.module = module
        self.device = device
        self.loss_fn = flow.nn.BCEWithLogitsLoss(reduction="mean")
        for optimizer, lr_scheduler, is_sparse in optimizers:
            self.add_optimizer(optimizer, lr_sch=lr_scheduler, is_sparse=is_sparse)
        if device == "cuda":  # the original's fusion settings
            self.config.allow_fuse_model_update_ops(True)
            self.config.allow_fuse_add_to_output(True)
            self.config.allow_fuse_cast_scale(True)
        if amp:
            self.config.enable_amp(True)
            self.set_grad_scaler(grad_scaler)

    def build(self, labels, dense, sparse):
        logits = self.module(dense.to(self.device), sparse.to(self.device))
        loss = self.loss_fn(logits, labels.to(self.device))
        loss.backward()
        return loss.to("cpu")


class EvalGraph(Graph):
    def __init__(self, module, device, amp):
        super().__init__()
        self.module = module
        self.device = device
        if amp:
            self.config.enable_amp(True)

    def build(self, dense, sparse):
        return self.module(dense.to(self.device), sparse.to(self.device)).sigmoid().to("cpu")
