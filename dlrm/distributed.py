"""Moving data between ranks: one process per device, global tensors on an all-ranks placement."""
import json

import numpy as np
import oneflow as flow


def cpu_placement():
    return flow.env.all_device_placement("cpu")


def to_global(array, placement):
    """A rank's local numpy batch -> its split(0) part of a global CPU tensor (no metadata exchange)."""
    return flow.from_numpy(array).to_global(placement=placement, sbp=flow.sbp.split(0), check_meta=False)


def gather_to_all(tensor):
    """A split global tensor, whole on every rank (local)."""
    return tensor.to_global(sbp=flow.sbp.broadcast).to_local()


def sum_over_ranks(value, placement):
    """The sum of every rank's Python float, on every rank."""
    t = flow.tensor([value], dtype=flow.float64)
    return float(t.to_global(placement=placement, sbp=flow.sbp.partial_sum).to_global(
        sbp=flow.sbp.broadcast).to_local().numpy()[0])


def broadcast_float(value, placement):
    """Rank 0's Python float, on every rank."""
    return sum_over_ranks(value if flow.env.get_rank() == 0 else 0.0, placement)


def broadcast_json(obj, placement):
    """Rank 0's JSON-able object, on every rank (other ranks pass anything, e.g. None).

    For decisions only rank 0 can make, e.g. about files on its own disk, so that every rank then
    takes the same path through the collectives."""
    data = json.dumps(obj).encode() if flow.env.get_rank() == 0 else b""
    size = int(broadcast_float(float(len(data)), placement))
    local = np.frombuffer(data, dtype=np.uint8).astype(np.int32) if data else np.zeros(size, dtype=np.int32)
    whole = flow.tensor(local).to_global(placement=placement, sbp=flow.sbp.partial_sum).to_global(
        sbp=flow.sbp.broadcast).to_local().numpy()
    return json.loads(whole.astype(np.uint8).tobytes().decode())


def broadcast_rows(array, shape, placement):
    """Rank 0's float32 array (other ranks pass None) as a global tensor on `placement`, whole on every rank."""
    if flow.env.get_world_size() > 1:
        local = flow.tensor(array if flow.env.get_rank() == 0 else np.zeros(shape, np.float32))
        flow.comm.broadcast(local, 0)
        array = local.numpy()
    return flow.tensor(array).to_global(placement=placement, sbp=flow.sbp.broadcast)
