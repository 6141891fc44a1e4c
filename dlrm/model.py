"""The DLRM model: dense features -> bottom MLP, embeddings, interaction, top MLP -> logit.

The interaction (ModelConfig.interaction_type): `dot`, the pairwise dot products of the original
DLRM, or `dcn`, DCNv2 low-rank cross layers (TorchRec's DLRM_DCN, MLPerf's DLRMv2).

Two embedding/interaction back ends, picked by device:
- cuda: OneEmbedding (flow.one_embedding.MultiTableEmbedding, model-parallel, with a
  device_mem / cached_host_mem / cached_ssd store) and the fused dot-interaction op;
- cpu: OneEmbedding aborts without CUDA and the fused op has no CPU kernel, so a plain
  embedding table (replicated, data-parallel) and an interaction built from bmm + gather that
  yields exactly the fused op's output layout.
"""
import math

import numpy as np
import oneflow as flow
import oneflow.nn as nn

from dlrm.schema import NUM_DENSE, NUM_SPARSE
from dlrm.store import make_store_options, table_offsets


def pad_to_multiple(n, multiple=8):
    return (n + multiple - 1) // multiple * multiple


class DenseFeatures(nn.Module):
    """log(max(x, 0) + 1) of the dense inputs, zero-padded 13 -> 16 for aligned GEMMs.

    The clamp keeps negative raw values (Criteo's I2 holds -1, -2; stored as raw + 1) finite.
    """

    def __init__(self, pad=True):
        super().__init__()
        self.out_features = pad_to_multiple(NUM_DENSE) if pad else NUM_DENSE

    def forward(self, x):
        x = flow.log(flow.clamp(x, min=0.0) + 1.0)
        if self.out_features != NUM_DENSE:
            x = flow.nn.functional.pad(x, (0, self.out_features - NUM_DENSE), value=0.0)
        return x


class MLP(nn.Module):
    """ReLU MLP; Glorot-normal weights, N(0, sqrt(1/out)) biases, as the original.

    Parameter names follow the original's checkpoints (`linear_layers.weight_0` fused,
    `linear_layers.<i>.features.0.weight` unfused), so checkpoints load both ways.
    """

    def __init__(self, in_features, units, fused, skip_final_activation):
        super().__init__()
        if fused:
            self.linear_layers = nn.FusedMLP(in_features, units[:-1], units[-1],
                                             skip_final_activation=skip_final_activation)
        else:
            widths = [in_features] + list(units)
            self.linear_layers = nn.Sequential(*[
                _Dense(widths[i], widths[i + 1], relu=i < len(units) - 1 or not skip_final_activation)
                for i in range(len(units))])
        for name, param in self.linear_layers.named_parameters():
            if "weight" in name:
                nn.init.normal_(param, 0.0, math.sqrt(2.0 / sum(param.shape)))
            else:
                nn.init.normal_(param, 0.0, math.sqrt(1.0 / param.shape[0]))

    def forward(self, x):
        return self.linear_layers(x)


class _Dense(nn.Module):
    def __init__(self, in_features, out_features, relu):
        super().__init__()
        linear = nn.Linear(in_features, out_features)
        self.features = nn.Sequential(linear, nn.ReLU(inplace=True)) if relu else linear

    def forward(self, x):
        return self.features(x)


def embedding_init_bounds(table_sizes):
    """Uniform init bound sqrt(1/rows) per table (the facebook DLRM init)."""
    return [math.sqrt(1.0 / n) for n in table_sizes]


def make_table_options(table_sizes):
    return [
        flow.one_embedding.make_table_options(flow.one_embedding.make_uniform_initializer(low=-s, high=s))
        for s in embedding_init_bounds(table_sizes)
    ]


EMBEDDING_NAME = "sparse_embedding"


class OneEmbedding(nn.Module):
    """flow.one_embedding.MultiTableEmbedding: column j of the ids is looked up in table j. OneFlow
    0.9.0 registers its store under ``name`` per process for the process's life (a second one of
    the same name aborts it): several models in one process need names of their own."""

    def __init__(self, table_sizes, embedding_vec_size, store, seed=0, name=EMBEDDING_NAME):
        super().__init__()
        self.key_type = getattr(flow, store.key_type)
        self.one_embedding = flow.one_embedding.MultiTableEmbedding(
            name=name,
            embedding_dim=embedding_vec_size,
            dtype=flow.float,
            key_type=self.key_type,
            tables=make_table_options(table_sizes),
            store_options=make_store_options(store.store_type, store.persistent_path, store.capacity,
                                             store.cache_memory_budget_mb, store.size_factor),
            seed=seed,
        )

    def forward(self, ids):
        return self.one_embedding.forward(ids)


class LocalEmbedding(nn.Module):
    """One weight matrix holding all 26 tables, for CPU runs (small tables).

    Ids are global (the preprocessing offsets each column); table j maps an id to row
    (id mod size_j) + offset_j, so any id, negative hash ids included, lands inside table j.
    """

    def __init__(self, table_sizes, embedding_vec_size):
        super().__init__()
        table_sizes = np.asarray(table_sizes, dtype=np.int64)
        offsets = table_offsets(table_sizes)
        # Filled in float32 a block of rows at a time (the same random stream as one draw per
        # table) and shared with the parameter (from_numpy): the table is in memory once.
        weight = np.empty((int(table_sizes.sum()), embedding_vec_size), dtype=np.float32)
        block = max(1, (1 << 22) // embedding_vec_size)
        for start, n, b in zip(offsets, table_sizes, embedding_init_bounds(table_sizes)):
            for lo in range(start, start + n, block):
                hi = min(lo + block, start + n)
                weight[lo:hi] = np.random.uniform(-b, b, size=(hi - lo, embedding_vec_size))
        self.weight = nn.Parameter(flow.from_numpy(weight))
        self.register_buffer("table_sizes", flow.tensor(table_sizes).reshape(1, -1), persistent=False)
        self.register_buffer("offsets", flow.tensor(offsets).reshape(1, -1), persistent=False)

    def forward(self, ids):
        ids = ids.to(flow.int64)
        rows = (ids % self.table_sizes + self.table_sizes) % self.table_sizes + self.offsets  # `%` truncates like C
        return flow.nn.functional.embedding(rows, self.weight)

    def row_index(self, ids):
        """forward's rows of a NumPy (B, 26) id array, in NumPy (np.mod is already non-negative)."""
        table_sizes = self.table_sizes.to_local().numpy() if self.table_sizes.is_global else self.table_sizes.numpy()
        offsets = self.offsets.to_local().numpy() if self.offsets.is_global else self.offsets.numpy()
        return np.mod(ids.astype(np.int64), table_sizes) + offsets


def interaction_indices(num_features, interaction_itself):
    """Flat indices into a (F, F) matrix of the lower triangle, row by row (the fused op's order)."""
    offset = 1 if interaction_itself else 0
    return [i * num_features + j for i in range(num_features) for j in range(i + offset)]


class Interaction(nn.Module):
    """Pairwise dot products of [dense vector, 26 embeddings], concatenated after the dense vector.

    Output: [x (D), lower triangle of T.T^T (row-major), zero padding to a multiple of 8].
    """

    def __init__(self, embedding_vec_size, interaction_itself, padding, use_fused_op):
        super().__init__()
        self.num_features = NUM_SPARSE + 1
        self.interaction_itself = interaction_itself
        self.use_fused_op = use_fused_op
        n = embedding_vec_size + len(interaction_indices(self.num_features, interaction_itself))
        self.output_size = pad_to_multiple(n) if padding else n
        self.output_padding = self.output_size - n
        self.register_buffer(
            "tril", flow.tensor(interaction_indices(self.num_features, interaction_itself), dtype=flow.int64),
            persistent=False)

    def forward(self, x, emb):
        B, D = x.shape[0], x.shape[1]
        if self.use_fused_op:
            return flow._C.fused_dot_feature_interaction(
                [x.reshape(B, 1, D), emb], output_concat=x,
                self_interaction=self.interaction_itself, output_padding=self.output_padding)
        T = flow.cat([x.reshape(B, 1, D), emb], dim=1)
        Z = flow.bmm(T, T.transpose(1, 2)).reshape(B, -1)
        out = flow.cat([x, flow.index_select(Z, 1, self.tril)], dim=1)
        if self.output_padding:
            out = flow.nn.functional.pad(out, (0, self.output_padding), value=0.0)
        return out


class CrossLayer(nn.Module):
    """One DCNv2 cross layer with a low-rank weight W = V U: x_{l+1} = x0 * (V (U x_l) + b) + x_l.

    U (r x n, `down`) and V (n x r, `up`) start Glorot-normal and b at zero, as TorchRec's
    LowRankCrossNet. OneFlow 0.9.0's fused_cross_feature_interaction (CUDA only) computes
    x0 * (x W^T + b) + x for a full n x n W: it cannot take the rank-r product without forming W,
    which costs n / 2r times the two thin GEMMs per sample (3.4x at DLRMv2's n = 3456, r = 512), so
    the layer is two plain GEMMs and elementwise ops on every device."""

    def __init__(self, in_features, low_rank_dim):
        super().__init__()
        self.down = nn.Linear(in_features, low_rank_dim, bias=False)
        self.up = nn.Linear(low_rank_dim, in_features)
        std = math.sqrt(2.0 / (in_features + low_rank_dim))
        nn.init.normal_(self.down.weight, 0.0, std)
        nn.init.normal_(self.up.weight, 0.0, std)
        nn.init.zeros_(self.up.bias)

    def forward(self, x0, x):
        return x0 * self.up(self.down(x)) + x


class CrossInteraction(nn.Module):
    """DCNv2: x0 = [dense vector, 26 embeddings] flattened (27 * D), then cross layers; the last
    layer's output (zero-padded to a multiple of 8 with padding) goes to the top MLP."""

    def __init__(self, embedding_vec_size, num_layers, low_rank_dim, padding):
        super().__init__()
        n = (NUM_SPARSE + 1) * embedding_vec_size
        self.layers = nn.ModuleList([CrossLayer(n, low_rank_dim) for _ in range(num_layers)])
        self.output_size = pad_to_multiple(n) if padding else n
        self.output_padding = self.output_size - n

    def forward(self, x, emb):
        x0 = flow.cat([x, emb.reshape(emb.shape[0], -1)], dim=1)
        out = x0
        for layer in self.layers:
            out = layer(x0, out)
        if self.output_padding:
            out = flow.nn.functional.pad(out, (0, self.output_padding), value=0.0)
        return out


def make_interaction(model, device):
    """The interaction of a ModelConfig (on CUDA the dot interaction is the fused op)."""
    if model.interaction_type == "dcn":
        return CrossInteraction(model.embedding_vec_size, model.dcn_num_layers, model.dcn_low_rank_dim,
                                padding=model.interaction_padding)
    return Interaction(model.embedding_vec_size, model.interaction_itself, padding=model.interaction_padding,
                       use_fused_op=(device == "cuda"))


class DLRM(nn.Module):
    """model: a ModelConfig (the whole architecture); store: a StoreConfig (used on CUDA only); seed:
    OneEmbedding's init seed; embedding_name: its OneEmbedding's (one per model in a process)."""

    def __init__(self, model, store, device, seed=0, embedding_name=EMBEDDING_NAME):
        super().__init__()
        self.dense = DenseFeatures(pad=model.dense_input_padding)
        self.bottom_mlp = MLP(self.dense.out_features, model.bottom_mlp, model.fused_mlp, skip_final_activation=False)
        if device == "cuda":
            self.embedding = OneEmbedding(model.table_sizes, model.embedding_vec_size, store, seed=seed,
                                          name=embedding_name)
        else:
            self.embedding = LocalEmbedding(model.table_sizes, model.embedding_vec_size)
        self.interaction = make_interaction(model, device)
        self.top_mlp = MLP(self.interaction.output_size, list(model.top_mlp) + [1], model.fused_mlp,
                           skip_final_activation=True)

    def embedding_parameters(self):
        """The CPU embedding table (the sparse optimizer's); empty with OneEmbedding, whose store
        the graph updates with the optimizer that holds its other parameters."""
        return list(self.embedding.parameters()) if isinstance(self.embedding, LocalEmbedding) else []

    def dense_parameters(self):
        sparse = {id(p) for p in self.embedding_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]

    def forward(self, dense, sparse):
        return self.head(dense, self.embedding(sparse))

    def head(self, dense, emb):
        """The logits from the dense inputs and the looked-up embeddings emb (B, 26, D)."""
        x = self.bottom_mlp(self.dense(dense))
        return self.top_mlp(self.interaction(x, emb))
