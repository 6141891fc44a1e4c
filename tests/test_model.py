"""Model pieces on CPU with real OneFlow: interaction layout, embedding, dense transform,
OneEmbedding store options, the LR schedule and AUC."""
import dataclasses

import numpy as np
import oneflow as flow
import pytest
from sklearn.metrics import roc_auc_score

from dlrm.config import ModelConfig, ScheduleConfig, get_parser
from dlrm.evaluation import log_loss, roc_auc
from dlrm.model import DLRM, DenseFeatures, Interaction, LocalEmbedding, interaction_indices, make_store_options
from dlrm.schedule import lr_at, make_lr_scheduler

RNG = np.random.default_rng(0)


def numpy_interaction(x, emb, itself, padding):
    """Plain reference: all pairwise dots of [x, emb_1..emb_26], i > j (i >= j with itself)."""
    T = np.concatenate([x[:, None, :], emb], axis=1)
    Z = T @ T.transpose(0, 2, 1)
    F = T.shape[1]
    pairs = [Z[:, i, j] for i in range(F) for j in range(i + 1 if itself else i)]
    out = np.concatenate([x, np.stack(pairs, axis=1)], axis=1)
    if padding:
        out = np.pad(out, ((0, 0), (0, (-out.shape[1]) % 8)))
    return out


@pytest.mark.parametrize("itself,padding,width", [(False, True, 480), (True, True, 512), (False, False, 479),
                                                  (True, False, 506)])
def test_cpu_interaction_matches_numpy_and_fused_layout(itself, padding, width):
    x = RNG.normal(size=(5, 128)).astype(np.float32)
    emb = RNG.normal(size=(5, 26, 128)).astype(np.float32)
    layer = Interaction(128, itself, padding, use_fused_op=False)
    out = layer(flow.tensor(x), flow.tensor(emb)).numpy()
    assert out.shape == (5, width) and layer.output_size == width
    np.testing.assert_allclose(out, numpy_interaction(x, emb, itself, padding), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("itself", [False, True])
def test_interaction_order_is_the_fused_kernels(itself):
    # The CUDA kernel's gather index: out[row*(row-1+2*offset)/2 + col] = in[row*F + col], col < row+offset.
    F, offset = 27, int(itself)
    kernel = {}
    for row in range(F):
        for col in range(row + offset):
            kernel[row * (offset + row - 1 + offset) // 2 + col] = row * F + col
    assert interaction_indices(F, itself) == [kernel[i] for i in range(len(kernel))]


def test_local_embedding_maps_any_id_into_its_table():
    sizes = [3, 5] + [2] * 24
    layer = LocalEmbedding(sizes, 4)
    bounds = np.sqrt(1.0 / np.asarray(sizes))
    w = layer.weight.numpy()
    assert w.shape == (sum(sizes), 4)
    assert np.abs(w[:3]).max() <= bounds[0] and np.abs(w[3:8]).max() <= bounds[1]
    ids = np.zeros((4, 26), dtype=np.int64)
    ids[:, 0] = [7, -7, 2**62, -(2**62) - 1]  # hash-mode ids are any int64
    ids[:, 1] = [40_000_001, 40_000_002, 5, -1]
    out = layer(flow.tensor(ids)).numpy()
    for b in range(4):
        np.testing.assert_array_equal(out[b, 0], w[ids[b, 0] % 3])
        np.testing.assert_array_equal(out[b, 1], w[3 + ids[b, 1] % 5])


def test_dense_transform_is_finite_for_negative_raw_values():
    # Stored dense = raw + 1; Criteo's I2 has raw -1 and -2 -> stored 0 and -1.
    x = np.array([[-1.0, 0.0, 1.0, 2.0, 1e9] + [1.0] * 8], dtype=np.float32)
    out = DenseFeatures(pad=True)(flow.tensor(x)).numpy()
    assert out.shape == (1, 16) and np.isfinite(out).all()
    np.testing.assert_allclose(out[0, :5], np.log([1.0, 1.0, 2.0, 3.0, 1e9 + 1]), rtol=1e-6)
    assert (out[0, 13:] == 0).all()
    assert DenseFeatures(pad=False)(flow.tensor(x)).shape == (1, 13)


SMALL = ModelConfig(table_sizes=(10,) * 26, embedding_vec_size=16, bottom_mlp=(32, 16), top_mlp=(32, 16),
                    fused_mlp=True, dense_input_padding=True, interaction_padding=True, interaction_itself=False)


def small_model(**kw):
    return DLRM(dataclasses.replace(SMALL, **kw), None, "cpu")


@pytest.mark.parametrize("fused", [True, False])
def test_dlrm_forward_shapes_and_init(fused):
    model = small_model(fused_mlp=fused)
    dense = flow.tensor(RNG.integers(-1, 50, size=(8, 13)).astype(np.float32))
    sparse = flow.tensor(RNG.integers(0, 10**9, size=(8, 26)))
    logits = model(dense, sparse)
    assert logits.shape == (8, 1) and np.isfinite(logits.numpy()).all()
    assert model.interaction.output_size == 16 + 351 + 1  # padded 367 -> 368
    weights = [p for n, p in model.bottom_mlp.named_parameters() if "weight" in n]
    assert len(weights) == 2


def test_checkpoint_keys_follow_the_original_layout():
    # The original's DLRMModule: bottom_mlp/top_mlp = MLP(linear_layers=FusedMLP | Sequential of
    # Dense(features=Sequential(Linear, ReLU))); interaction has no state.
    fused = small_model().state_dict().keys()
    assert [k for k in fused if k.startswith("bottom_mlp")] == [
        "bottom_mlp.linear_layers.weight_0", "bottom_mlp.linear_layers.bias_0",
        "bottom_mlp.linear_layers.weight_1", "bottom_mlp.linear_layers.bias_1"]
    assert "top_mlp.linear_layers.weight_2" in fused and not [k for k in fused if k.startswith("interaction")]
    plain = small_model(fused_mlp=False).state_dict().keys()
    assert "bottom_mlp.linear_layers.0.features.0.weight" in plain
    assert "top_mlp.linear_layers.2.features.bias" in plain  # the last layer has no ReLU


def test_store_options_for_each_store_type():
    capacity = 187_767_399
    dev = make_store_options("device_mem", "/ssd/p", capacity, 8192)
    assert dev["kv_store"]["caches"] == [{"policy": "full", "capacity": capacity, "value_memory_kind": "device"}]
    assert dev["kv_store"]["persistent_table"]["path"] == "/ssd/p"
    assert dev["kv_store"]["persistent_table"]["capacity_hint"] == capacity
    host = make_store_options("cached_host_mem", "/ssd/p", capacity, 4096)
    assert host["kv_store"]["caches"] == [
        {"policy": "lru", "cache_memory_budget_mb": 4096, "value_memory_kind": "device"},
        {"policy": "full", "capacity": capacity, "value_memory_kind": "host"}]
    ssd = make_store_options("cached_ssd", ["/a", "/b"], capacity, 2048)
    assert ssd["kv_store"]["caches"] == [{"policy": "lru", "cache_memory_budget_mb": 2048, "value_memory_kind": "device"}]
    assert ssd["kv_store"]["persistent_table"] == {"path": ["/a", "/b"], "physical_block_size": 4096,
                                                   "capacity_hint": capacity}
    for opts in (dev, host, ssd):
        assert opts["size_factor"] == 1  # plain SGD keeps no optimizer state per row


def test_store_options_pass_oneembeddings_own_validation():
    # flow.one_embedding._init is what MultiTableEmbedding runs before touching CUDA.
    from dlrm.model import make_table_options
    sizes = [1000] * 26
    for store in ("device_mem", "cached_host_mem", "cached_ssd"):
        opts = make_store_options(store, "/tmp/p", sum(sizes), 1024)
        dim, tables, kv = flow.one_embedding._init("sparse_embedding", 128, flow.float, flow.int64,
                                                   make_table_options(sizes), opts, None)
        assert dim == 128 and kv["storage_dim"] == 128 and kv["key_type_size"] == 8
        assert len(tables["tables"]) == 26
        init = tables["tables"][0]["columns"][0]["initializer"]
        assert init == {"type": "uniform", "low": -np.sqrt(1 / 1000), "high": np.sqrt(1 / 1000)}


@pytest.mark.parametrize("store,path,budget,message", [
    ("ssd", "/p", 1, "is not one of"), ("cached_ssd", None, 1, "--persistent_path is required"),
    ("cached_host_mem", "/p", 0, "--cache_memory_budget_mb must be > 0")])
def test_store_options_errors(store, path, budget, message):
    with pytest.raises(ValueError, match=message):
        make_store_options(store, path, 100, budget)


def test_lr_schedule_matches_oneflow_schedulers():
    args = ScheduleConfig(learning_rate=24.0, warmup_batches=10, decay_start=30, decay_batches=15, train_batches=60)
    assert lr_at(1, args) == 0.0
    assert lr_at(6, args) == pytest.approx(12.0)
    assert lr_at(11, args) == 24.0 and lr_at(30, args) == 24.0
    assert lr_at(31, args) == 24.0 and lr_at(32, args) == pytest.approx(24 * (1 - 1 / 15) ** 2)
    assert lr_at(45, args) == pytest.approx(24 * (1 / 15) ** 2)
    assert lr_at(46, args) == 0.0 and lr_at(100, args) == 0.0
    # The graph compiles OneFlow's schedulers; they must give the same value at every step.
    param = flow.nn.Parameter(flow.zeros(1))
    opt = flow.optim.SGD([param], lr=args.learning_rate)
    sched = make_lr_scheduler(opt, args)
    for step in range(1, 60):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(step, args), abs=1e-9), step
        opt.step()
        sched.step()


def test_original_default_schedule_values():
    a = get_parser().parse_args(["--data_dir", "x"])
    args = ScheduleConfig(a.learning_rate, a.warmup_batches, a.decay_start, a.decay_batches, a.train_batches)
    assert lr_at(2751, args) == 24.0
    assert lr_at(75000, args) == pytest.approx(24 * (1 - 25684 / 27772) ** 2)


def test_auc_equals_sklearn_with_ties():
    labels = RNG.integers(0, 2, size=50_000).astype(np.float32)
    preds = np.round(RNG.random(50_000) * 0.3 + labels * 0.2, 2).astype(np.float32)  # many ties
    ours = roc_auc(flow.tensor(labels), flow.tensor(preds))
    assert ours == pytest.approx(roc_auc_score(labels, preds), abs=1e-6)
    assert 0.9 < ours < 0.99  # informative scores, far from the 0.5 of a broken metric


def test_log_loss_equals_sklearn():
    from sklearn.metrics import log_loss as sk_log_loss
    labels = RNG.integers(0, 2, size=10_000)
    preds = np.clip(RNG.random(10_000) * 0.5 + labels * 0.4, 0, 1).astype(np.float32)
    preds[:3] = [0.0, 1.0, 1.0]  # clipped, not infinite
    p64 = preds.astype(np.float64)
    assert log_loss(labels, preds) == pytest.approx(sk_log_loss(labels, np.clip(p64, 1e-7, 1 - 1e-7)), rel=1e-6)


# ----------------------------------------------------------------------------- DCNv2
def numpy_cross(x, emb, layers, padding):
    """x_{l+1} = x0 * (V_l (U_l x_l) + b_l) + x_l on x0 = [x, emb flattened], in float64."""
    x0 = np.concatenate([x, emb.reshape(len(emb), -1)], axis=1).astype(np.float64)
    xl = x0
    for U, V, b in layers:
        xl = x0 * ((xl @ U.T) @ V.T + b) + xl
    return np.pad(xl, ((0, 0), (0, (-xl.shape[1]) % 8))) if padding else xl


@pytest.mark.parametrize("dim,num_layers,rank,padding,width", [(16, 3, 8, True, 432), (6, 2, 5, True, 168),
                                                               (6, 1, 200, False, 162)])
def test_cross_interaction_matches_numpy(dim, num_layers, rank, padding, width):
    from dlrm.model import CrossInteraction
    layer = CrossInteraction(dim, num_layers, rank, padding)
    for cross in layer.layers:  # a non-zero bias, so that b_l is checked too
        flow.nn.init.normal_(cross.up.bias, 0.0, 0.1)
    x = RNG.normal(size=(4, dim)).astype(np.float32)
    emb = RNG.normal(scale=0.3, size=(4, 26, dim)).astype(np.float32)
    out = layer(flow.tensor(x), flow.tensor(emb)).numpy()
    assert out.shape == (4, width) and layer.output_size == width
    weights = [(c.down.weight.numpy(), c.up.weight.numpy(), c.up.bias.numpy()) for c in layer.layers]
    assert weights[0][0].shape == (rank, 27 * dim) and weights[0][1].shape == (27 * dim, rank)
    np.testing.assert_allclose(out, numpy_cross(x, emb, weights, padding), rtol=1e-4, atol=1e-4)
    if padding and width > 27 * dim:
        assert (out[:, 27 * dim:] == 0).all()


def test_cross_layer_init_is_torchrecs():
    from dlrm.model import CrossLayer
    layer = CrossLayer(3456, 512)
    for w in (layer.down.weight.numpy(), layer.up.weight.numpy()):  # Glorot normal: std sqrt(2 / (n + r))
        assert w.std() == pytest.approx(np.sqrt(2 / (3456 + 512)), rel=0.01)
    assert (layer.up.bias.numpy() == 0).all()


def test_dcn_model_gradients_reach_every_parameter():
    model = small_model(interaction_type="dcn", dcn_num_layers=2, dcn_low_rank_dim=8, fused_mlp=False)
    keys = [k for k in model.state_dict() if k.startswith("interaction")]
    assert keys == ["interaction.layers.0.down.weight", "interaction.layers.0.up.weight",
                    "interaction.layers.0.up.bias", "interaction.layers.1.down.weight",
                    "interaction.layers.1.up.weight", "interaction.layers.1.up.bias"]
    assert model.interaction.output_size == 27 * 16
    dense = flow.tensor(RNG.integers(-1, 50, size=(8, 13)).astype(np.float32))
    sparse = flow.tensor(RNG.integers(0, 10**9, size=(8, 26)))
    labels = flow.tensor(RNG.integers(0, 2, size=(8, 1)).astype(np.float32))
    logits = model(dense, sparse)
    assert logits.shape == (8, 1)
    flow.nn.BCEWithLogitsLoss()(logits, labels).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and np.abs(p.grad.numpy()).max() > 0, name


def test_dcn_trains_in_graph_mode():
    """One compiled training graph (the CPU path of dlrm.graphs) lowers the loss on a fixed batch."""
    from dlrm.config import OptimizerConfig
    from dlrm.graphs import build_train_graph
    model = small_model(interaction_type="dcn", dcn_num_layers=3, dcn_low_rank_dim=16, fused_mlp=False)
    schedule = ScheduleConfig(learning_rate=0.05, warmup_batches=0, decay_start=100, decay_batches=1,
                              train_batches=100)
    graph = build_train_graph(model, OptimizerConfig("adagrad", sparse_embedding=False), schedule, "cpu")
    dense = flow.tensor(RNG.integers(-1, 50, size=(64, 13)).astype(np.float32))
    sparse = flow.tensor(RNG.integers(0, 10, size=(64, 26)))
    labels = flow.tensor(RNG.integers(0, 2, size=(64, 1)).astype(np.float32))
    losses = [float(graph(labels, dense, sparse).numpy()) for _ in range(20)]
    assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0], losses


def test_sparse_adagrad_equals_dense_adagrad_in_process():
    """dlrm.sparse_adagrad's step (unique rows, probe gradient, NumPy update) against OneFlow's dense
    Adagrad over the whole table, from the same initial weights, on batches that repeat ids."""
    from dlrm.config import OptimizerConfig
    from dlrm.distributed import cpu_placement, to_global
    from dlrm.graphs import build_train_graph
    from dlrm.sparse_adagrad import SUM_KEY, SparseAdagradTrainGraph
    cpu = cpu_placement()
    schedule = ScheduleConfig(learning_rate=0.1, warmup_batches=3, decay_start=100, decay_batches=1, train_batches=100)
    models, graphs = [], []
    for sparse in (True, False):
        flow.manual_seed(3)
        np.random.seed(3)
        model = small_model(table_sizes=(50,) * 26, fused_mlp=False)
        model.to_global(cpu, flow.sbp.broadcast)
        models.append(model)
        graphs.append(build_train_graph(model, OptimizerConfig("adagrad", sparse), schedule, "cpu", global_batch=32))
    assert isinstance(graphs[0], SparseAdagradTrainGraph) and not isinstance(graphs[1], SparseAdagradTrainGraph)
    initial = models[0].embedding.weight.to_local().numpy().copy()
    rng = np.random.default_rng(5)
    for _ in range(6):  # ids 0..29: rows 30..49 of each table are never touched
        batch = [rng.integers(-1, 30, size=(32, 13)).astype(np.float32), rng.integers(0, 30, size=(32, 26))]
        label = rng.integers(0, 2, size=(32, 1)).astype(np.float32)
        losses = [float(g(to_global(label, cpu), to_global(batch[0], cpu), to_global(batch[1], cpu)).numpy())
                  for g in graphs]
        assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    sparse_w, dense_w = (m.embedding.weight.to_local().numpy() for m in models)
    np.testing.assert_allclose(sparse_w, dense_w, rtol=1e-5, atol=1e-6)
    untouched = (np.arange(50 * 26) % 50) >= 30
    assert (sparse_w[untouched] == initial[untouched]).all() and (sparse_w[~untouched] != initial[~untouched]).any()
    sums = graphs[0].host_variables()[SUM_KEY].to_local().numpy()
    assert (sums[untouched] == 0).all() and (sums[~untouched] > 0).mean() > 0.9
