"""The two compiled OneFlow graphs (nn.Graph): a training step and an evaluation forward pass.

Inputs arrive as global CPU tensors (split over ranks); the graphs move them to the device and
return the loss / predictions on the CPU.
"""
import oneflow as flow


def make_grad_scaler(policy):
    """AMP loss scaling: the original's static 1024, or dynamic."""
    if policy == "static":
        return flow.amp.StaticGradScaler(1024)
    return flow.amp.GradScaler(init_scale=2 ** 30, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000)


class TrainGraph(flow.nn.Graph):
    def __init__(self, module, optimizer, lr_scheduler, device, amp, grad_scaler):
        super().__init__()
        self.module = module
        self.device = device
        self.loss_fn = flow.nn.BCEWithLogitsLoss(reduction="mean")
        self.add_optimizer(optimizer, lr_sch=lr_scheduler)
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


class EvalGraph(flow.nn.Graph):
    def __init__(self, module, device, amp):
        super().__init__()
        self.module = module
        self.device = device
        if amp:
            self.config.enable_amp(True)

    def build(self, dense, sparse):
        return self.module(dense.to(self.device), sparse.to(self.device)).sigmoid().to("cpu")
