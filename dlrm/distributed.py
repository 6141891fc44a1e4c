"""Moving data between ranks: one process per device, global tensors on an all-ranks placement."""
import oneflow as flow


def cpu_placement():
    return flow.env.all_device_placement("cpu")


def to_global(array, placement):
    """A rank's local numpy batch -> its split(0) part of a global CPU tensor (no metadata exchange)."""
    return flow.from_numpy(array).to_global(placement=placement, sbp=flow.sbp.split(0), check_meta=False)


def gather_to_all(tensor):
    """A split global tensor, whole on every rank (local)."""
    return tensor.to_global(sbp=flow.sbp.broadcast).to_local()


def broadcast_float(value, placement):
    """Rank 0's Python float, on every rank."""
    t = flow.tensor([value if flow.env.get_rank() == 0 else 0.0], dtype=flow.float64)
    return float(t.to_global(placement=placement, sbp=flow.sbp.partial_sum).to_global(
        sbp=flow.sbp.broadcast).to_local().numpy()[0])
