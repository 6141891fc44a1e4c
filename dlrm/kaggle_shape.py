"""The shape of Criteo's Kaggle ``train.txt``, as a distribution synthetic rows are drawn from.

Fitted once on the shared 0.3 % random sample of the real ``train.txt`` (``fit_shape``; run
``python -m dlrm.kaggle_shape SAMPLE.tsv`` to rewrite ``dlrm/kaggle_shape_constants.py``) and
shipped as constants: the sample's statistics and the fitted parameters, never its values.

Rows are i.i.d. draws:

* missing fields: a whole missing-pattern (which of I1..I13, C1..C26 are empty) drawn from the
  sample's pattern frequencies, so fields that go missing together (C3/C4/C12/C16/C21/C24;
  C19/C20/C25/C26; I1/I10) still do;
* dense I*: the sample's quantile function (``DENSE_GRID`` points), interpolated in log space;
* categorical C*: a two-part frequency model per column --

  - head: the values the sample saw at least ``HEAD_MIN_COUNT`` times, each with its sample
    frequency (stored as a count-of-counts table, e.g. "12 values seen 10 times");
  - tail: a pool of ``M`` further values with the Zipf-Mandelbrot density (x + q)^-a on
    x in [0, M), value k taking the mass of [k, k+1), and the tail's share of the draws.
    (a, q, share) are fitted, M solved for, so that a sample of the real sample's size has, in
    expectation, the real sample's distinct count and singleton count, and a draw of Kaggle's full
    size has Kaggle's distinct count (``KAGGLE_TABLE_SIZES``, TorchRec's Kaggle table sizes; they
    count "missing" as one value where a column has missing values).  Columns whose every value the
    sample saw often (C9, C20) have no tail; columns with a value Kaggle has and the sample never
    saw (C23) get a flat tail too thin to show in the sample.

Expected distinct / singleton counts of n draws from probabilities p are computed exactly:
E[distinct] = sum(1 - (1 - p_i)^n), E[singletons] = sum(n p_i (1 - p_i)^(n - 1)), with the
tail's near-equal probabilities summed in groups of neighbouring ranks.
"""
import collections
import math
import os
import sys

import numpy as np

from dlrm.schema import DENSE_COLUMNS, NUM_DENSE, NUM_SPARSE, SPARSE_COLUMNS

KAGGLE_TRAIN_ROWS = 45_840_617
KAGGLE_TEST_ROWS = 6_042_135
# TorchRec's / facebookresearch/dlrm's Kaggle embedding table sizes (missing counted as a value).
KAGGLE_TABLE_SIZES = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
                      27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
HEAD_MIN_COUNT = 3  # values seen less often than this make up the fitted tail
DENSE_GRID = 512  # quantiles at (k + 0.5) / DENSE_GRID: neither the sample's minimum nor its maximum
MIN_PATTERN_COUNT = 2  # missing patterns seen once are left out (104 rows, 0.09% of the sample)
MAX_POOL = 2.0**31  # tail values are numbered after the head's; hex values are a bijection of 32 bits
_EXACT_RANKS = 4096  # tail ranks summed one by one; beyond, in groups of ratio _GROUP_RATIO
_GROUP_RATIO = 1.002


# --------------------------------------------------------------------------------------------
# The tail: Zipf-Mandelbrot on [0, M), rank k takes the mass of [k, k + 1)
# --------------------------------------------------------------------------------------------
def _antiderivative(x, a, q):
    """G(x) = integral_0^x (t + q)^-a dt."""
    if abs(1.0 - a) < 1e-9:
        return np.log1p(np.asarray(x, dtype=np.float64) / q)
    return ((np.asarray(x, dtype=np.float64) + q) ** (1.0 - a) - q ** (1.0 - a)) / (1.0 - a)


def tail_cdf(x, a, q, m):
    """Mass of [0, min(x, M)) under the tail density, as a fraction of the tail's mass."""
    return _antiderivative(np.minimum(x, m), a, q) / _antiderivative(m, a, q)


def tail_ranks(u, a, q, m):
    """Ranks (int64) of the tail values at uniform quantiles u in [0, 1): the inverse CDF, floored."""
    y = u * _antiderivative(m, a, q)
    if abs(1.0 - a) < 1e-9:
        x = q * np.expm1(y)
    else:
        x = (q ** (1.0 - a) + (1.0 - a) * y) ** (1.0 / (1.0 - a)) - q
    return np.minimum(np.floor(x), math.ceil(m) - 1).astype(np.int64)


def tail_groups(a, q, m):
    """(probability of each rank in the group, number of ranks) of the tail, as a fraction of its mass."""
    top = math.ceil(m)
    edges = np.arange(min(top, _EXACT_RANKS) + 1, dtype=np.float64)
    if top > _EXACT_RANKS:
        n_groups = int(math.ceil(math.log(top / _EXACT_RANKS) / math.log(_GROUP_RATIO)))
        more = np.unique(np.ceil(_EXACT_RANKS * _GROUP_RATIO ** np.arange(1, n_groups + 1)))
        edges = np.concatenate([edges, np.minimum(more[more > _EXACT_RANKS], top)])
        edges = np.unique(edges)
    sizes = np.diff(edges)
    mass = np.diff(tail_cdf(edges, a, q, m))
    return mass / sizes, sizes


def expected_counts(p, mult, n):
    """Expected (distinct, singletons, values seen at least twice) among n draws, given
    probabilities p each held by mult values."""
    p = np.asarray(p, dtype=np.float64)
    log_miss = n * np.log1p(-np.minimum(p, 1.0 - 1e-15))
    seen = -np.expm1(log_miss)
    once = n * p * np.exp(log_miss - np.log1p(-np.minimum(p, 1.0 - 1e-15)))
    distinct = float(np.sum(mult * seen))
    singles = float(np.sum(mult * once))
    return distinct, singles, distinct - singles


def head_probabilities(col):
    """(probability, number of values) of the column's head, before normalising with the tail."""
    return (np.array([c for c, _ in col["head"]], dtype=np.float64) / col["sample_nonmissing"],
            np.array([k for _, k in col["head"]], dtype=np.float64))


def column_groups(col):
    """(p, mult) of a fitted column: its head values then its tail groups, p summing to 1."""
    head_p, head_mult = head_probabilities(col)
    total = float(np.sum(head_p * head_mult)) + col["tail_mass"]
    if col["tail_mass"] <= 0:
        return head_p / total, head_mult
    p, mult = tail_groups(col["a"], col["q"], col["m"])
    return np.concatenate([head_p, col["tail_mass"] * p]) / total, np.concatenate([head_mult, mult])


def column_expectations(col, n):
    """Expected (distinct, singletons, seen twice or more) of the column's values among n non-missing draws."""
    return expected_counts(*column_groups(col), n)


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------
def shipped_shape():
    """The fitted shape shipped in dlrm/kaggle_shape_constants.py."""
    from dlrm.kaggle_shape_constants import SHAPE

    return SHAPE


def build_model(shape=None):
    """Arrays for sampling from a fitted shape (default: the shipped one)."""
    shape = shipped_shape() if shape is None else shape
    patterns = np.array(shape["missing_patterns"], dtype=np.int64)
    bits = np.arange(NUM_DENSE + NUM_SPARSE, dtype=np.int64)
    model = {
        "pattern_cdf": np.cumsum(patterns[:, 1]) / patterns[:, 1].sum(),
        "pattern_missing": ((patterns[:, :1] >> bits) & 1).astype(bool),  # (patterns, 39)
        "dense": [], "columns": [],
    }
    for name in DENSE_COLUMNS:
        q = np.array(shape["dense"][name]["quantiles"], dtype=np.float64)
        offset = min(q[0], 0.0)  # log1p of (value - offset) is defined for I2's negative values
        model["dense"].append((offset, np.log1p(q - offset)))
    for name in SPARSE_COLUMNS:
        col = shape["categorical"][name]
        head_p, head_mult = head_probabilities(col)
        per_value = np.repeat(head_p, head_mult.astype(np.int64))
        total = per_value.sum() + col["tail_mass"]
        tail_size = math.ceil(col["m"]) if col["tail_mass"] > 0 else 0
        model["columns"].append({
            "head_cdf": np.cumsum(per_value) / total,
            "head_size": len(per_value),
            "tail": (col["a"], col["q"], col["m"]) if tail_size else None,
            "size": len(per_value) + tail_size,  # value ids are 0 .. size - 1
        })
    return model


def sample_column(column, u):
    """Value ids (int64) at uniform quantiles u: the head's by its CDF, the tail's by its inverse CDF."""
    head_cdf = column["head_cdf"]
    idx = np.minimum(np.searchsorted(head_cdf, u, side="right"), max(column["head_size"] - 1, 0))
    if column["tail"] is not None:
        start = head_cdf[-1] if len(head_cdf) else 0.0
        in_tail = u >= start
        v = (u[in_tail] - start) / (1.0 - start)
        idx[in_tail] = column["head_size"] + tail_ranks(v, *column["tail"])
    return idx


def sample_features(model, rng, n):
    """dense (n,13) int64, dense_missing (n,13) bool, cats (n,26) int64 (-1 = missing) of n rows."""
    pattern = np.searchsorted(model["pattern_cdf"], rng.random(n), side="right")
    missing = model["pattern_missing"][np.minimum(pattern, len(model["pattern_cdf"]) - 1)]
    u = rng.random((n, NUM_DENSE))
    dense = np.empty((n, NUM_DENSE), dtype=np.int64)
    grid = (np.arange(DENSE_GRID) + 0.5) / DENSE_GRID
    for i, (offset, log_q) in enumerate(model["dense"]):
        dense[:, i] = offset + np.rint(np.expm1(np.interp(u[:, i], grid, log_q)))
    u = rng.random((n, NUM_SPARSE))
    cats = np.empty((n, NUM_SPARSE), dtype=np.int64)
    for j, column in enumerate(model["columns"]):
        cats[:, j] = sample_column(column, u[:, j])
    cats[missing[:, NUM_DENSE:]] = -1
    return dense, missing[:, :NUM_DENSE].copy(), cats


def hex_values(keys, idx):
    """(n, 8) uint8 lower-case hex of a keyed bijection of 32 bits applied to value ids idx:
    distinct ids give distinct strings, and no table is needed however large the pool."""
    x = (idx.astype(np.uint64) + np.uint64(keys[0])).astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    x ^= np.uint32(keys[1])
    shifts = np.arange(28, -1, -4, dtype=np.uint32)
    return np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[(x[:, None] >> shifts) & np.uint32(0xF)]


def expected_distinct(model_shape, rows):
    """Per column, the model's expected (distinct, seen at least twice) among `rows` rows."""
    out = []
    for name in SPARSE_COLUMNS:
        col = model_shape["categorical"][name]
        n = rows * col["sample_nonmissing"] / col["sample"]["rows"]
        d, _, twice = column_expectations(col, n)
        out.append((d, twice))
    return out


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------
def read_sample(path):
    """(labels, dense string columns, categorical string columns) of a 40-field Criteo text file."""
    rows = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 1 + NUM_DENSE + NUM_SPARSE:
                raise ValueError(f"{path}:{line_no}: {len(fields)} fields, expected {1 + NUM_DENSE + NUM_SPARSE}")
            rows.append(fields)
    cols = list(zip(*rows))
    return cols[0], cols[1:1 + NUM_DENSE], cols[1 + NUM_DENSE:]


def sample_statistics(values):
    """{rows, nonmissing, distinct, singletons} of one categorical column's strings ('' = missing)."""
    counts = collections.Counter(v for v in values if v)
    return {"rows": len(values), "nonmissing": sum(counts.values()), "distinct": len(counts),
            "singletons": sum(1 for c in counts.values() if c == 1)}


def fit_column(values, table_size, full_rows=KAGGLE_TRAIN_ROWS):
    """Fitted frequency model (a dict) of one categorical column's sample strings."""
    from scipy.optimize import least_squares

    stats = sample_statistics(values)
    counts = collections.Counter(v for v in values if v)
    n = stats["nonmissing"]
    full_n = full_rows * n / stats["rows"]
    target_full = table_size - (1 if n < stats["rows"] else 0)  # the table counts missing as a value
    count_of_counts = collections.Counter(c for c in counts.values() if c >= HEAD_MIN_COUNT)
    head = sorted(count_of_counts.items(), reverse=True)
    head_values = sum(k for _, k in head)
    col = {"table_size": table_size, "full_distinct_target": target_full,
           "sample": stats, "sample_nonmissing": n, "head": [list(h) for h in head],
           "tail_mass": 0.0, "a": 0.0, "q": 1.0, "m": 0.0}
    if target_full <= head_values:
        return col
    tail_count = sum(c for c in counts.values() if c < HEAD_MIN_COUNT)
    head_d, _, _ = column_expectations(col, n)
    if tail_count == 0 or stats["distinct"] - head_d < 0.5:
        # Values Kaggle has that the sample never saw: a flat tail too thin to show up in n draws
        # (expected 0.05 draws) yet seen ~20 times each at full size.
        col.update(tail_mass=(target_full - head_values) / math.sqrt(n * full_n), a=0.0, q=1.0,
                   m=float(target_full - head_values))
        return col
    # The tail's mass starts at the share of draws the sample's rare values took, but is fitted too:
    # values seen HEAD_MIN_COUNT times or more over-state their frequency (the many rare values that
    # happened to reach the threshold), so the head may give some mass back.
    observed_tail = tail_count / n

    def expect(x, m, draws):
        trial = dict(col, a=x[0], q=math.exp(x[1]), tail_mass=math.exp(x[2]), m=m)
        return column_expectations(trial, draws)

    def pool_for(x):
        """Pool size M whose full-size expected distinct count is Kaggle's (bisection on log M;
        the largest pool when even that falls short)."""
        lo, hi = 0.0, math.log(MAX_POOL)
        if expect(x, MAX_POOL, full_n)[0] <= target_full:
            return MAX_POOL
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            if expect(x, math.exp(mid), full_n)[0] < target_full:
                lo = mid
            else:
                hi = mid
        return math.exp(hi)

    def residuals(x):
        m = pool_for(x)
        d, s, _ = expect(x, m, n)
        full_d = expect(x, m, full_n)[0]
        return [(d - stats["distinct"]) / stats["distinct"], (s - stats["singletons"]) / max(stats["singletons"], 1),
                3.0 * (full_d - target_full) / target_full]

    best = None
    for a0 in (1.0, 0.5, 2.0):
        r = least_squares(residuals, x0=[a0, math.log(10.0), math.log(observed_tail)],
                          bounds=([0.0, -10.0, math.log(observed_tail) - 3], [6.0, 25.0, math.log(observed_tail) + 3]),
                          xtol=1e-10, ftol=1e-10, diff_step=1e-4)
        if best is None or r.cost < best.cost:
            best = r
        if best.cost < 1e-6:
            break
    x = best.x
    col.update(a=float(x[0]), q=float(math.exp(x[1])), tail_mass=float(math.exp(x[2])), m=pool_for(x))
    return col


def fit_dense(values, grid=DENSE_GRID):
    """{"quantiles": ...} of one dense column's non-empty strings, at (k + 0.5) / grid."""
    present = np.array([int(v) for v in values if v], dtype=np.int64)
    u = (np.arange(grid) + 0.5) / grid
    return {"quantiles": np.quantile(present, u, method="inverted_cdf").astype(int).tolist()}


def missing_patterns(dense, cats):
    """[[mask, count], ...] of the sample's missing patterns seen at least MIN_PATTERN_COUNT times:
    bit i of mask set = field i (I1..I13 then C1..C26) empty."""
    columns = list(dense) + list(cats)
    masks = np.zeros(len(columns[0]), dtype=np.int64)
    for i, col in enumerate(columns):
        masks |= np.array([v == "" for v in col], dtype=np.int64) << i
    counts = collections.Counter(masks.tolist())
    return sorted([[m, c] for m, c in counts.items() if c >= MIN_PATTERN_COUNT], key=lambda x: (-x[1], x[0]))


def fit_shape(path):
    """The whole fitted shape (a dict of plain numbers) of a sample of Kaggle's train.txt."""
    labels, dense, cats = read_sample(path)
    shape = {
        "source": "a 0.3% random sample of Kaggle train.txt (kaggle_sample_train117k.tsv)",
        "sample_rows": len(labels),
        "sample_click_rate": sum(1 for v in labels if v == "1") / len(labels),
        "full_train_rows": KAGGLE_TRAIN_ROWS,
        "full_test_rows": KAGGLE_TEST_ROWS,
        "head_min_count": HEAD_MIN_COUNT,
        "missing_patterns": missing_patterns(dense, cats),
        "dense": {DENSE_COLUMNS[i]: fit_dense(dense[i]) for i in range(NUM_DENSE)},
        "categorical": {},
    }
    for j in range(NUM_SPARSE):
        col = fit_column(cats[j], KAGGLE_TABLE_SIZES[j])
        n = col["sample_nonmissing"]
        d, s, _ = column_expectations(col, n)
        full_n = KAGGLE_TRAIN_ROWS * n / col["sample"]["rows"]
        fd, fs, f2 = column_expectations(col, full_n)
        col["expected"] = {"sample_distinct": round(d, 1), "sample_singletons": round(s, 1),
                           "full_distinct": round(fd), "full_singletons": round(fs),
                           "full_seen_twice_or_more": round(f2)}
        shape["categorical"][SPARSE_COLUMNS[j]] = col
    return shape


def write_constants(shape, path):
    """Write the shape as a Python module holding one dict, SHAPE."""
    import pprint

    with open(path + ".tmp", "w") as f:
        f.write('"""Generated by `python -m dlrm.kaggle_shape SAMPLE.tsv` (dlrm/kaggle_shape.py): the fitted\n'
                'shape of Kaggle train.txt and the statistics of the real sample it was fitted on."""\n\n')
        f.write("SHAPE = " + pprint.pformat(shape, width=110, compact=True, sort_dicts=False) + "\n")
    os.replace(path + ".tmp", path)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("error: usage: python -m dlrm.kaggle_shape KAGGLE_SAMPLE_TRAIN.tsv "
              "(a random sample of Kaggle's train.txt, 40 tab-separated fields a line)", file=sys.stderr)
        return 2
    try:
        shape = fit_shape(argv[0])
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kaggle_shape_constants.py")
    write_constants(shape, out)
    for name, col in shape["categorical"].items():
        e, s = col["expected"], col["sample"]
        print(f"{name}: sample distinct {s['distinct']} (model {e['sample_distinct']}), singletons "
              f"{s['singletons']} (model {e['sample_singletons']}); full distinct {col['full_distinct_target']} "
              f"(model {e['full_distinct']}), full seen >= 2: {e['full_seen_twice_or_more']}; "
              f"a={col['a']:.3f} q={col['q']:.3g} M={col['m']:.4g} tail={col['tail_mass']:.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
