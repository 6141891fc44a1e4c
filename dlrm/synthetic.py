"""Write synthetic raw data in the exact Criteo text format, with a planted click model.

Each line is one impression: 40 tab-separated fields, no header --
``label  I1..I13  C1..C26`` where label is ``0``/``1``, I* are integers (possibly empty,
I2 sometimes -1/-2/-3 like the real data) and C* are 8 lower-case hex digits (possibly empty).

Layouts:
  * ``--layout criteo1t`` (default): ``day_0`` .. ``day_{N-1}`` in ``--output_dir`` like the Criteo
    1TB click logs, ``--rows_per_day`` rows each; with ``--kaggle`` a single ``train.txt`` with
    ``--days * --rows_per_day`` rows (byte-identical to the concatenation of the day files the same
    seed would give).  The rest of this paragraph and the next describe this layout.
  * ``--layout kaggle``: ``train.txt`` (``--rows`` rows, or ``--fraction`` of Kaggle's 45,840,617)
    and ``test.txt`` (39 fields, no label; Kaggle's 6,042,135 : 45,840,617 ratio of rows) shaped like
    Kaggle's train.txt: missing patterns, dense quantiles and per-column value frequencies fitted on
    a 0.3% sample of it (dlrm/kaggle_shape.py), so that at full size each column has Kaggle's
    distinct count and a sample-sized subsample has the sample's distinct and singleton counts.
    Values are 32-bit keyed bijections of value ids (no vocabulary table, pools of up to 2^31).
    Made by ``--workers`` forked processes in 100,000-row blocks whose RNG is keyed by
    (seed, file, block), written in block order by the main process: the bytes depend on the seed only.
    The planted model is the same as below (its item effects repeat every 10M items of a pool);
    its AUC is computed from click/no-click counts in 2^20 probability bins.

Categorical column j has a vocabulary of ``cardinalities[j]`` items; item k is drawn with
p(k) ~ 1/(k+1)^1.1 and is written as a fixed pseudo-random 32-bit hex value (distinct within the
column).  The label is Bernoulli(sigmoid(logit)), logit = bias + scale * (weights . log1p(clamped
dense) + per-item effects of a few categorical columns); bias and scale are calibrated on a
separate sample so the click rate is ~25% and the planted model's AUC is ~0.775.

Everything is deterministic in ``--seed``: same seed -> byte-identical files.  Different days
get different rows but share vocabulary and planted model.  ``planted_model.json`` records the
settings, click rate and the AUC of the true probabilities vs the sampled labels.

Command line (tools/make_synthetic_criteo.py runs ``main``):

  python tools/make_synthetic_criteo.py --output_dir /tmp/criteo_synth [--days 3]
      [--rows_per_day 100000] [--seed 0] [--cardinalities c1,...,c26] [--kaggle] [--overwrite]
  python tools/make_synthetic_criteo.py --output_dir /tmp/kaggle_synth --layout kaggle
      (--rows N | --fraction F) [--workers W] [--seed 0] [--overwrite]

Importable: ``generate(output_dir, ...)`` and ``generate_kaggle(output_dir, ...)`` return the
planted_model.json content.
"""

import argparse
import os
import re
import time

import numpy as np

from dlrm import kaggle_shape
from dlrm.jsonfile import read_json, write_json
from dlrm.schema import DENSE_COLUMNS, NUM_DENSE, NUM_SPARSE, SPARSE_COLUMNS

GENERATOR_VERSION = 1
# Rows are generated in blocks of this size, each from its own RNG stream keyed by
# (seed, day, block), so memory stays flat and the output does not depend on anything else.
BLOCK_ROWS = 100_000
MAX_CARDINALITY = 10_000_000
PLANTED_MODEL_FILE = "planted_model.json"  # the settings, click rate and planted AUC, beside the data

# Loosely shaped after the real Criteo vocabularies, capped at 50000.
DEFAULT_CARDINALITIES = [
    1460, 583, 50000, 40000, 305, 24, 12517, 633, 3, 20000, 5683, 45000, 3194,
    27, 14992, 35000, 10, 5652, 2173, 4, 30000, 18, 15, 25000, 105, 15000,
]
CAT_MISSING_RATES = [
    0.0, 0.0, 0.03, 0.03, 0.0, 0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.03, 0.0,
    0.0, 0.0, 0.03, 0.0, 0.0, 0.30, 0.30, 0.03, 0.25, 0.0, 0.03, 0.30, 0.30,
]
ZIPF_EXPONENT = 1.1

# Dense value = floor(expm1(mu + sigma * N(0,1))) clipped at 0: small, heavy-tailed counts.
DENSE_MU = [0.8, 1.5, 2.0, 1.6, 7.5, 3.3, 1.3, 2.2, 3.6, 0.5, 0.8, 0.3, 1.6]
DENSE_SIGMA = [1.0, 1.6, 1.2, 0.9, 1.6, 1.4, 1.3, 1.0, 1.1, 0.6, 0.8, 0.9, 1.0]
DENSE_MISSING_RATES = [0.40, 0.0, 0.20, 0.20, 0.03, 0.20, 0.04, 0.0, 0.04, 0.40, 0.04, 0.45, 0.20]
DENSE_MAX = 2**31 - 1
# I2 (index 1) takes negative values sometimes, like the real data.
NEG_COLUMN = 1
NEG_RATE = 0.05
NEG_VALUES = np.array([-1, -2, -3])
NEG_PROBS = np.array([0.75, 0.20, 0.05])

# Planted model (before the calibrated global scale): weights on log1p(max(I, 0)), missing -> 0,
# and N(0, sigma) per-item effects on a few categorical columns (missing -> 0).
DENSE_WEIGHTS = {0: 0.5, 2: -0.3, 5: -0.25, 6: 0.35, 10: 0.45, 12: 0.2}  # I1 I3 I6 I7 I11 I13
CAT_EFFECT_SIGMA = {0: 0.5, 5: 0.6, 8: 0.7, 10: 0.5, 16: 0.6, 25: 0.5}  # C1 C6 C9 C11 C17 C26
TARGET_CLICK_RATE = 0.25
TARGET_AUC = 0.775
CALIBRATION_ROWS = 100_000

# RNG stream ids (first entropy word after the seed).
_VOCAB_STREAM, _MODEL_STREAM, _CALIB_STREAM, _DATA_STREAM = 1, 2, 3, 4
_KAGGLE_DATA_STREAM = 5  # the kaggle layout's rows: (seed, 5, file, block), file 0 train.txt, 1 test.txt

_OUTPUT_RE = re.compile(r"^(day_\d+|train\.txt|test\.txt|planted_model\.json)(\.tmp)?$")


class UsageError(Exception):
    """Bad flag value; reported as a one-line error."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + error
        self.exit(2, f"{self.prog}: error: {message}\n")


def _rng(seed, *keys):
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *keys])))


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# --------------------------------------------------------------------------------------------
# Spec: vocabularies + planted model, a pure function of (seed, cardinalities)
# --------------------------------------------------------------------------------------------
def make_vocab(seed, column, cardinality):
    """Distinct pseudo-random 32-bit values for the column's items, as an (n, 8) uint8 hex array."""
    rng = _rng(seed, _VOCAB_STREAM, column)
    values = np.empty(0, dtype=np.uint32)
    while len(values) < cardinality:
        draw = rng.integers(0, 2**32, size=cardinality + cardinality // 8 + 16, dtype=np.uint32)
        draw = np.concatenate([values, draw])
        _, first = np.unique(draw, return_index=True)
        values = draw[np.sort(first)]  # keep first occurrences, in draw order
    values = values[:cardinality]
    shifts = np.arange(28, -1, -4, dtype=np.uint32)
    nibbles = (values[:, None] >> shifts) & 0xF
    return np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[nibbles]


def zipf_cdf(cardinality, exponent=ZIPF_EXPONENT):
    p = 1.0 / np.arange(1, cardinality + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(p)
    return cdf / cdf[-1]


def build_spec(seed, cardinalities, calibrate=True):
    cardinalities = [int(c) for c in cardinalities]
    return planted_spec(seed, cardinalities, calibrate, cardinalities=cardinalities,
                        vocab=[make_vocab(seed, j, c) for j, c in enumerate(cardinalities)],
                        cdf=[zipf_cdf(c) for c in cardinalities])


def planted_model_record(spec, item, **layout):
    """planted_model.json's description of a spec's click model; `item`: how a value picks its effect,
    `layout`: the layout's own fields."""
    return {
        "logit": "bias + scale * (sum_i w_i * log1p(max(I_i, 0)) [missing -> 0]"
                 f" + sum_j effect_j[{item}] [missing -> 0])",
        "bias": spec["bias"],
        "scale": spec["scale"],
        "dense_weights": {DENSE_COLUMNS[i]: w for i, w in DENSE_WEIGHTS.items()},
        "categorical_effect_sigma": {SPARSE_COLUMNS[j]: s for j, s in CAT_EFFECT_SIGMA.items()},
        **layout,
        "target_click_rate": TARGET_CLICK_RATE,
        "expected_auc": spec["expected_auc"],
    }


def plant_effects(spec, pool_sizes):
    """The planted model's per-item effects: N(0, sigma) per item of a few categorical columns.
    A pool larger than MAX_CARDINALITY gets MAX_CARDINALITY effects, item k taking effect k mod that
    (the Kaggle layout's tails are pools of up to 2^31 values, nearly all of them rare)."""
    rng = _rng(spec["seed"], _MODEL_STREAM)
    for j, sigma in sorted(CAT_EFFECT_SIGMA.items()):
        spec["cat_effects"][j] = rng.normal(0.0, sigma, size=min(pool_sizes[j], MAX_CARDINALITY))


def _solve_bias(raw, scale, target):
    """Bias b with mean(sigmoid(scale*raw + b)) == target (Newton, monotone in b)."""
    z = scale * raw
    b = float(np.log(target / (1 - target)) - np.mean(z))
    for _ in range(50):
        p = _sigmoid(z + b)
        f = p.mean() - target
        if abs(f) < 1e-10:
            break
        b -= f / max((p * (1 - p)).mean(), 1e-12)
    return b


def expected_auc(probs):
    """AUC expected when labels ~ Bernoulli(probs) and probs are the scores (ties count half)."""
    scores, inverse = np.unique(probs, return_inverse=True)
    pos = np.bincount(inverse, weights=probs, minlength=len(scores))
    neg = np.bincount(inverse, weights=1.0 - probs, minlength=len(scores))
    neg_below = np.cumsum(neg) - neg
    return float(np.sum(pos * (neg_below + 0.5 * neg)) / (pos.sum() * neg.sum()))


def calibrate_spec(spec, rows=CALIBRATION_ROWS):
    """Pick global scale (bisection on expected AUC) and bias (click rate) on a side sample."""
    rng = _rng(spec["seed"], _CALIB_STREAM)
    dense, dense_missing, cats = sample_features(spec, rng, rows)
    raw = raw_logits(spec, dense, dense_missing, cats)
    lo, hi = 0.0, 8.0
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        b = _solve_bias(raw, mid, TARGET_CLICK_RATE)
        if expected_auc(_sigmoid(mid * raw + b)) < TARGET_AUC:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-3:
            break
    spec["scale"] = 0.5 * (lo + hi)
    spec["bias"] = _solve_bias(raw, spec["scale"], TARGET_CLICK_RATE)
    spec["expected_auc"] = expected_auc(_sigmoid(spec["scale"] * raw + spec["bias"]))
    return spec


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------
def sample_features(spec, rng, n):
    """Return dense (n,13) int64, dense_missing (n,13) bool, cats (n,26) int64 (-1 = missing)."""
    if "kaggle_model" in spec:
        return kaggle_shape.sample_features(spec["kaggle_model"], rng, n)
    z = rng.standard_normal((n, NUM_DENSE))
    dense = np.floor(np.expm1(np.asarray(DENSE_MU) + np.asarray(DENSE_SIGMA) * z))
    dense = np.clip(dense, 0, DENSE_MAX).astype(np.int64)
    neg = rng.random(n) < NEG_RATE
    dense[neg, NEG_COLUMN] = rng.choice(NEG_VALUES, size=int(neg.sum()), p=NEG_PROBS)
    dense_missing = rng.random((n, NUM_DENSE)) < np.asarray(DENSE_MISSING_RATES)

    cats = np.empty((n, NUM_SPARSE), dtype=np.int64)
    u = rng.random((n, NUM_SPARSE))
    for j, cdf in enumerate(spec["cdf"]):
        cats[:, j] = np.minimum(np.searchsorted(cdf, u[:, j], side="right"), len(cdf) - 1)
    cats[rng.random((n, NUM_SPARSE)) < np.asarray(CAT_MISSING_RATES)] = -1
    return dense, dense_missing, cats


def raw_logits(spec, dense, dense_missing, cats):
    """Unscaled, unbiased planted logit."""
    x = np.log1p(np.maximum(dense, 0).astype(np.float64))
    x[dense_missing] = 0.0
    raw = x @ spec["dense_weights"]
    for j, effects in spec["cat_effects"].items():
        idx = cats[:, j]
        raw += np.where(idx >= 0, effects[np.maximum(idx, 0) % len(effects)], 0.0)
    return raw


def sample_block(spec, rng, n):
    dense, dense_missing, cats = sample_features(spec, rng, n)
    probs = _sigmoid(spec["scale"] * raw_logits(spec, dense, dense_missing, cats) + spec["bias"])
    labels = (rng.random(n) < probs).astype(np.uint8)
    return labels, dense, dense_missing, cats, probs


# --------------------------------------------------------------------------------------------
# Formatting: build a fixed-width uint8 matrix whose padding bytes are NUL, then drop the NULs.
# --------------------------------------------------------------------------------------------
_TAB, _NL, _ZERO, _MINUS = 9, 10, 48, 45


def _int_field(values, missing):
    """(n, w) uint8: optional '-' then right-aligned digits, NUL padding; missing -> all NUL."""
    mag = np.abs(values)
    ndig = len(str(int(mag.max()))) if len(mag) else 1
    pow10 = 10 ** np.arange(ndig - 1, -1, -1, dtype=np.int64)
    digits = (mag[:, None] // pow10) % 10
    significant = mag[:, None] >= pow10
    significant[:, -1] = True  # "0"
    out = np.zeros((len(values), ndig + 1), dtype=np.uint8)
    out[:, 1:] = np.where(significant, digits + _ZERO, 0)
    out[:, 0] = np.where(values < 0, _MINUS, 0)
    out[missing] = 0
    return out


def _hex_items(spec, j, idx):
    """(n, 8) uint8 hex strings of column j's items idx (>= 0)."""
    if "kaggle_model" in spec:
        return kaggle_shape.hex_values(spec["hex_keys"][j], idx)
    return spec["vocab"][j][idx]


def format_block(spec, labels, dense, dense_missing, cats):
    """Bytes of the block's lines in Criteo text format (labels None: no label field, like test.txt)."""
    n = len(dense)
    parts = [] if labels is None else [(labels + _ZERO).astype(np.uint8)[:, None]]
    for i in range(NUM_DENSE):
        if parts:
            parts.append(np.full((n, 1), _TAB, dtype=np.uint8))
        parts.append(_int_field(dense[:, i], dense_missing[:, i]))
    for j in range(NUM_SPARSE):
        parts.append(np.full((n, 1), _TAB, dtype=np.uint8))
        idx = cats[:, j]
        hexes = _hex_items(spec, j, np.maximum(idx, 0))
        hexes[idx < 0] = 0
        parts.append(hexes)
    parts.append(np.full((n, 1), _NL, dtype=np.uint8))
    flat = np.concatenate(parts, axis=1).ravel()
    return flat[flat != 0].tobytes()


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def write_days(spec, path, days, rows_per_day, on_day=None):
    """Write the given day indices' rows to `path` (atomically, via path + '.tmp').

    Returns per-day (probs float32, labels uint8) arrays for the AUC bookkeeping.
    """
    tmp = path + ".tmp"
    results = []
    with open(tmp, "wb") as f:
        for day in days:
            probs = np.empty(rows_per_day, dtype=np.float32)
            labels = np.empty(rows_per_day, dtype=np.uint8)
            for block, start in enumerate(range(0, rows_per_day, BLOCK_ROWS)):
                n = min(BLOCK_ROWS, rows_per_day - start)
                rng = _rng(spec["seed"], _DATA_STREAM, day, block)
                lab, dense, dmiss, cats, p = sample_block(spec, rng, n)
                f.write(format_block(spec, lab, dense, dmiss, cats))
                probs[start:start + n] = p
                labels[start:start + n] = lab
            results.append((probs, labels))
            if on_day:
                on_day(day)
    os.replace(tmp, path)
    return results


def _auc(labels, probs):
    from sklearn.metrics import roc_auc_score

    if labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, probs))


def prepare_output_dir(output_dir, overwrite):
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UsageError(f"--output_dir {output_dir} exists and is not a directory")
    os.makedirs(output_dir, exist_ok=True)
    existing = sorted(os.listdir(output_dir))
    if existing and not overwrite:
        raise UsageError(f"--output_dir {output_dir} is not empty ({len(existing)} entries); "
                         "pass --overwrite to replace its generated files")
    for name in existing:  # stale outputs of an earlier run (e.g. more days); nothing else
        if _OUTPUT_RE.match(name) and os.path.isfile(os.path.join(output_dir, name)):
            os.remove(os.path.join(output_dir, name))


def validate(days, rows_per_day, seed, cardinalities):
    if days < 1:
        raise UsageError(f"--days must be >= 1, got {days}")
    if rows_per_day < 1:
        raise UsageError(f"--rows_per_day must be >= 1, got {rows_per_day}")
    if seed < 0:
        raise UsageError(f"--seed must be >= 0, got {seed}")
    if len(cardinalities) != NUM_SPARSE:
        raise UsageError(f"--cardinalities needs {NUM_SPARSE} values, got {len(cardinalities)}")
    bad = [c for c in cardinalities if not 1 <= c <= MAX_CARDINALITY]
    if bad:
        raise UsageError(f"--cardinalities values must be in [1, {MAX_CARDINALITY}], got {bad[0]}")


def parse_cardinalities(text):
    try:
        return [int(tok) for tok in text.split(",")]
    except ValueError:
        raise UsageError(f"--cardinalities must be a comma-separated list of {NUM_SPARSE} integers, "
                         f"got {text!r}") from None


def generate(output_dir, days=3, rows_per_day=100_000, seed=0, cardinalities=None,
             kaggle=False, overwrite=False):
    """Generate the data set; returns the planted_model.json content (a dict)."""
    cardinalities = list(DEFAULT_CARDINALITIES if cardinalities is None else cardinalities)
    validate(days, rows_per_day, seed, cardinalities)
    prepare_output_dir(output_dir, overwrite)
    t0 = time.time()
    spec = build_spec(seed, cardinalities)
    if kaggle:
        files = ["train.txt"]
        results = write_days(spec, os.path.join(output_dir, "train.txt"), range(days), rows_per_day)
    else:
        files = [f"day_{d}" for d in range(days)]
        results = []
        for d in range(days):
            results += write_days(spec, os.path.join(output_dir, files[d]), [d], rows_per_day)
    probs = np.concatenate([p for p, _ in results])
    labels = np.concatenate([y for _, y in results])
    seconds = time.time() - t0
    summary = {
        "generator": "tools/make_synthetic_criteo.py",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "days": days,
        "rows_per_day": rows_per_day,
        "total_rows": days * rows_per_day,
        "kaggle": kaggle,
        "files": files,
        "cardinalities": cardinalities,
        "missing_rates": {"dense": DENSE_MISSING_RATES, "categorical": CAT_MISSING_RATES},
        "click_rate": float(labels.mean()),
        "planted_auc": _auc(labels, probs),
        "per_day": [
            {"day": d, "rows": len(y), "click_rate": float(y.mean()), "planted_auc": _auc(y, p)}
            for d, (p, y) in enumerate(results)
        ],
        "planted_model": planted_model_record(spec, "item of C_j", zipf_exponent=ZIPF_EXPONENT),
        "seconds": round(seconds, 3),
        "rows_per_second": round(days * rows_per_day / max(seconds, 1e-9)),
    }
    write_json(os.path.join(output_dir, PLANTED_MODEL_FILE), summary)
    return summary


# --------------------------------------------------------------------------------------------
# The kaggle layout: train.txt + test.txt shaped like Kaggle's (dlrm/kaggle_shape.py)
# --------------------------------------------------------------------------------------------
KAGGLE_FILES = ("train.txt", "test.txt")  # file ids 0 and 1 of the row streams
AUC_BINS = 1 << 20  # planted AUC from click / no-click counts of the probabilities in this many bins
_worker_spec = None  # the spec, inherited by forked workers (never pickled)


def build_kaggle_spec(seed, calibrate=True):
    """Spec of the kaggle layout: the fitted Kaggle shape, hex keys per column, the planted model."""
    model = kaggle_shape.build_model()
    keys = _rng(seed, _VOCAB_STREAM).integers(0, 2**32, size=(NUM_SPARSE, 2), dtype=np.uint64)
    return planted_spec(seed, [c["size"] for c in model["columns"]], calibrate, kaggle_model=model,
                        hex_keys=[(int(a), int(b)) for a, b in keys])


def planted_spec(seed, column_sizes, calibrate, **layout):
    """A layout's spec (its own fields in `layout`) with the planted click model over columns of
    column_sizes values: dense weights, categorical effects, calibrated bias and scale."""
    spec = dict(seed=seed, **layout, dense_weights=np.zeros(NUM_DENSE), cat_effects={}, bias=0.0, scale=1.0)
    for i, w in DENSE_WEIGHTS.items():
        spec["dense_weights"][i] = w
    plant_effects(spec, column_sizes)
    if calibrate:
        calibrate_spec(spec)
    return spec


def kaggle_row_counts(rows=None, fraction=None):
    """(train rows, test rows): `rows` or `fraction` of Kaggle's train.txt, test.txt in Kaggle's ratio."""
    if (rows is None) == (fraction is None):
        raise UsageError("--layout kaggle needs exactly one of --rows N and --fraction F")
    if rows is not None and rows < 1:
        raise UsageError(f"--rows must be >= 1, got {rows}")
    if fraction is not None and not 0 < fraction <= 1:
        raise UsageError(f"--fraction must be in (0, 1] (a share of Kaggle's {kaggle_shape.KAGGLE_TRAIN_ROWS} "
                         f"train rows), got {fraction}")
    train = rows if rows is not None else max(1, round(fraction * kaggle_shape.KAGGLE_TRAIN_ROWS))
    return train, round(train * kaggle_shape.KAGGLE_TEST_ROWS / kaggle_shape.KAGGLE_TRAIN_ROWS)


def _make_block(task):
    """(bytes, probabilities, labels) of one block of train.txt (file 0), or (bytes, None, None) of
    test.txt (file 1: no label field). Runs in a worker process."""
    file_id, block, n = task
    spec = _worker_spec
    rng = _rng(spec["seed"], _KAGGLE_DATA_STREAM, file_id, block)
    if file_id == 0:
        labels, dense, dmiss, cats, probs = sample_block(spec, rng, n)
        return format_block(spec, labels, dense, dmiss, cats), probs.astype(np.float32), labels.astype(np.uint8)
    dense, dmiss, cats = sample_features(spec, rng, n)
    return format_block(spec, None, dense, dmiss, cats), None, None


def _block_tasks(file_id, rows):
    return [(file_id, block, min(BLOCK_ROWS, rows - start)) for block, start in enumerate(range(0, rows, BLOCK_ROWS))]


def _in_order(pool, tasks, window):
    """_make_block's results of tasks, in order, with at most `window` blocks being made or waiting
    to be written (Pool.imap would let finished blocks pile up in memory when the disk is slower)."""
    import collections

    pending = collections.deque()
    for task in tasks:
        if len(pending) == window:
            yield pending.popleft().get()
        pending.append(pool.apply_async(_make_block, (task,)))
    while pending:
        yield pending.popleft().get()


def _write_kaggle_files(spec, output_dir, row_counts, workers):
    """Write train.txt and test.txt (atomically, via .tmp); blocks are made by `workers` processes
    and written by this one in block order. Returns the (click, no-click) counts per probability bin."""
    global _worker_spec
    hist = np.zeros((2, AUC_BINS), dtype=np.int64)
    _worker_spec = spec
    pool = None
    try:
        if workers > 1:
            import multiprocessing

            pool = multiprocessing.get_context("fork").Pool(workers)  # inherits _worker_spec
        for file_id, (name, rows) in enumerate(zip(KAGGLE_FILES, row_counts)):
            path = os.path.join(output_dir, name)
            tasks = _block_tasks(file_id, rows)
            blocks = _in_order(pool, tasks, 2 * workers) if pool else map(_make_block, tasks)
            with open(path + ".tmp", "wb") as f:
                for data, probs, labels in blocks:
                    f.write(data)
                    if probs is not None:
                        bins = np.minimum((probs.astype(np.float64) * AUC_BINS).astype(np.int64), AUC_BINS - 1)
                        hist[0] += np.bincount(bins[labels == 1], minlength=AUC_BINS)
                        hist[1] += np.bincount(bins[labels == 0], minlength=AUC_BINS)
            os.replace(path + ".tmp", path)
    finally:
        _worker_spec = None
        if pool is not None:
            pool.terminate()
            pool.join()
    return hist


def binned_auc(hist):
    """AUC of probabilities binned into click / no-click counts (ties within a bin count half)."""
    pos, neg = hist[0].astype(np.float64), hist[1].astype(np.float64)
    if pos.sum() == 0 or neg.sum() == 0:
        return None
    neg_below = np.cumsum(neg) - neg
    return float(np.sum(pos * (neg_below + 0.5 * neg)) / (pos.sum() * neg.sum()))


def generate_kaggle(output_dir, rows=None, fraction=None, seed=0, workers=0, overwrite=False):
    """Write train.txt (40 fields) and test.txt (39 fields, no label) shaped like Kaggle's, with
    `workers` processes (0: one per core); the bytes depend on the seed only. Returns the
    planted_model.json content."""
    train_rows, test_rows = kaggle_row_counts(rows, fraction)
    if seed < 0:
        raise UsageError(f"--seed must be >= 0, got {seed}")
    if workers < 0:
        raise UsageError(f"--workers must be >= 0 (0: one per core), got {workers}")
    workers = workers or os.cpu_count() or 1
    prepare_output_dir(output_dir, overwrite)
    t0 = time.time()
    spec = build_kaggle_spec(seed)
    hist = _write_kaggle_files(spec, output_dir, (train_rows, test_rows), workers)
    clicks, total = int(hist[0].sum()), int(hist.sum())
    seconds = time.time() - t0
    shape = kaggle_shape.shipped_shape()
    expected = kaggle_shape.expected_distinct(shape, train_rows)
    summary = {
        "generator": "tools/make_synthetic_criteo.py",
        "generator_version": GENERATOR_VERSION,
        "layout": "kaggle",
        "seed": seed,
        "total_rows": train_rows,
        "test_rows": test_rows,
        "fraction_of_kaggle": train_rows / kaggle_shape.KAGGLE_TRAIN_ROWS,
        "files": list(KAGGLE_FILES),
        "workers": workers,
        "shape": "dlrm/kaggle_shape_constants.py (fitted by dlrm/kaggle_shape.py on a 0.3% sample of "
                 "Kaggle train.txt)",
        "kaggle_table_sizes": kaggle_shape.KAGGLE_TABLE_SIZES,
        "expected_distinct_train": {c: round(d) for c, (d, _) in zip(SPARSE_COLUMNS, expected)},
        "expected_seen_twice_or_more_train": {c: round(t) for c, (_, t) in zip(SPARSE_COLUMNS, expected)},
        "click_rate": clicks / total,
        "planted_auc": binned_auc(hist),
        "planted_model": planted_model_record(
            spec, "item of C_j mod effects",
            effects_per_column={SPARSE_COLUMNS[j]: len(e) for j, e in spec["cat_effects"].items()}),
        "seconds": round(seconds, 3),
        "rows_per_second": round((train_rows + test_rows) / max(seconds, 1e-9)),
    }
    write_json(os.path.join(output_dir, PLANTED_MODEL_FILE), summary)
    return summary


def read_planted_model(data_dir):
    """The planted_model.json of a generated data directory as a dict, or None when it has none."""
    return read_json(os.path.join(data_dir, PLANTED_MODEL_FILE))


def build_parser():
    p = _Parser(prog="make_synthetic_criteo.py",
                description="Write synthetic Criteo-format raw data with a planted click model.")
    p.add_argument("--output_dir", required=True,
                   help="directory for day_0..day_{N-1} (or train.txt; train.txt + test.txt with --layout kaggle)")
    p.add_argument("--layout", choices=LAYOUTS, default="criteo1t",
                   help="criteo1t: day files (or one train.txt with --kaggle) of the planted-model data; "
                        "kaggle: train.txt + test.txt shaped like Kaggle's (default criteo1t)")
    p.add_argument("--days", type=int, default=None, help="number of day files (criteo1t layout; default 3)")
    p.add_argument("--rows_per_day", type=int, default=None,
                   help="rows per day (criteo1t layout; default 100000)")
    p.add_argument("--rows", type=int, default=None,
                   help="train.txt rows (kaggle layout; test.txt gets Kaggle's test/train ratio of them)")
    p.add_argument("--fraction", type=float, default=None,
                   help=f"train.txt rows as a share of Kaggle's {kaggle_shape.KAGGLE_TRAIN_ROWS} (kaggle layout; "
                        "1 = full size)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes writing the kaggle layout (default: one per core); the bytes do not depend on it")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--cardinalities", default=None,
                   help=f"comma list of {NUM_SPARSE} vocabulary sizes for {SPARSE_COLUMNS[0]}..{SPARSE_COLUMNS[-1]} "
                        f"(default {','.join(map(str, DEFAULT_CARDINALITIES))})")
    p.add_argument("--kaggle", action="store_true",
                   help="write one train.txt with days*rows_per_day rows instead of day files")
    p.add_argument("--overwrite", action="store_true",
                   help="allow a non-empty output dir (replaces generated files found there)")
    return p


LAYOUTS = ("criteo1t", "kaggle")
_LAYOUT_FLAGS = {"criteo1t": ("days", "rows_per_day", "cardinalities", "kaggle"),
                 "kaggle": ("rows", "fraction", "workers")}


def check_layout_flags(args):
    """Refuse a flag of the other layout (it would be ignored)."""
    for layout, flags in _LAYOUT_FLAGS.items():
        if layout == args.layout:
            continue
        for flag in flags:
            value = getattr(args, flag)
            if value is not None and value is not False:
                raise UsageError(f"--{flag} is a flag of --layout {layout}, not of --layout {args.layout}")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_layout_flags(args)
        if args.layout == "kaggle":
            s = generate_kaggle(args.output_dir, rows=args.rows, fraction=args.fraction, seed=args.seed,
                                workers=args.workers or 0, overwrite=args.overwrite)
        else:
            cards = None if args.cardinalities is None else parse_cardinalities(args.cardinalities)
            s = generate(args.output_dir, days=3 if args.days is None else args.days,
                         rows_per_day=100_000 if args.rows_per_day is None else args.rows_per_day,
                         seed=args.seed, cardinalities=cards, kaggle=args.kaggle,
                         overwrite=args.overwrite)
    except UsageError as e:
        parser.error(str(e))
    auc = "n/a" if s["planted_auc"] is None else f"{s['planted_auc']:.4f}"
    if args.layout == "kaggle":
        print(f"wrote train.txt ({s['total_rows']} rows) and test.txt ({s['test_rows']} rows) to "
              f"{args.output_dir} in {s['seconds']:.1f}s with {s['workers']} worker(s) "
              f"({s['rows_per_second']} rows/s): click_rate={s['click_rate']:.4f} planted_auc={auc} seed={s['seed']}")
        return 0
    print(f"wrote {len(s['files'])} file(s), {s['total_rows']} rows ({s['days']} x "
          f"{s['rows_per_day']}) to {args.output_dir} in {s['seconds']:.1f}s "
          f"({s['rows_per_second']} rows/s): click_rate={s['click_rate']:.4f} "
          f"planted_auc={auc} seed={s['seed']}")
    return 0

