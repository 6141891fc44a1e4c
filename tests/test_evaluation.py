"""The evaluation metrics (dlrm/evaluation.py) against scikit-learn: AUC with ties, log loss."""
import numpy as np
import oneflow as flow
import pytest
from sklearn.metrics import roc_auc_score

from dlrm.evaluation import log_loss, roc_auc

RNG = np.random.default_rng(0)


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
