"""What each --optimizer is, in one table: its OneFlow class, the state it keeps per embedding value
(OneEmbedding's size_factor and the names of the state in a store row) and whether the CPU run can
update only the embedding rows a batch touches."""
from typing import NamedTuple, Tuple

import oneflow as flow


class Optimizer(NamedTuple):
    make: type                # the OneFlow optimizer class
    state: Tuple[str, ...]    # state per embedding value, in the store's order, by the suffix OneFlow's
    #                           graph gives the state of a parameter (`<parameter>-<suffix>`, e.g. weight-m)
    sparse_cpu: bool          # a sparse (IndexedSlices) CPU update exists: OneFlow 0.9.0's kernels for
    #                           SGD and Adam, dlrm.sparse_adagrad's for Adagrad

    @property
    def size_factor(self):
        """Floats per embedding value in a store row: the value, then the optimizer's state."""
        return 1 + len(self.state)


OPTIMIZERS = {
    "sgd": Optimizer(flow.optim.SGD, (), sparse_cpu=True),
    "adagrad": Optimizer(flow.optim.Adagrad, ("sum",), sparse_cpu=True),  # the sum of squared gradients
    "adam": Optimizer(flow.optim.Adam, ("m", "v"), sparse_cpu=True),      # the two moments
}
