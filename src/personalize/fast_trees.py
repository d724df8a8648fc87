"""Exact compiled evaluation of small LightGBM boosters: predictions and TreeSHAP.

A fitted booster is fixed at scoring time and its trees are small (TRIAL_PARAMS: at most 7
leaves, so at most 6 internal nodes). Both things LightGBM computes per row depend on the
row only through the outcome of each internal node's split test:

* the prediction is the leaf the row reaches, and
* path-dependent TreeSHAP (what ``pred_contrib`` and SHAP's TreeExplainer compute for a
  LightGBM model) decides, at every internal node, only which child is "hot" for the row
  (``Tree::TreeSHAP`` calls ``Decision(feature_values[split_feature], node)`` and never
  reads the row otherwise); everything else in the recursion is the tree's structure,
  its cover counts and leaf values.

So per tree the row's *decision pattern* (one bit per internal node: did the row go
right?) determines both. With k internal nodes there are 2**k patterns (64 for k = 6);
we precompute, per tree and pattern, the leaf value and the Shapley contribution of every
feature the tree splits on. Boosters over the same features are compiled together into a
`Forest`: each distinct split of all its trees is tested once per row (a byte per split and
row, in blocks of 256 rows), each tree assembles its pattern from those bytes, and a table
look-up gives its leaf value or its contributions. The tables are exact: the leaf table
is the tree itself, and the SHAP table is the Shapley value of the path-dependent value
function ``v(S) = sum_leaves value * prod_{f on path} (o_f if f in S else z_f)`` (o_f: the row
satisfies every split on f along the path; z_f: product of the cover fractions), which is
exactly what TreeSHAP computes (Lundberg et al. 2020, Algorithm 2), here evaluated by the
polynomial form of the product game's Shapley value.

Split tests follow LightGBM 4 (``tree.h``) to the bit: ``value <= threshold`` for
numeric splits with the missing-type rules (NaN becomes 0.0 unless the split's missing
type is NaN; a NaN- or Zero-type split sends missing values to its default side),
categorical splits by bitset membership of ``static_cast<int>(value)`` (NaN and negative
go right), and inputs with ``|value| <= kZeroThreshold`` read as 0.0 as LightGBM's dense
row reader does. A frame's categorical levels are mapped onto the booster's stored ones by
value, as LightGBM's ``pandas_categorical`` mapping does (the level 1 is not the text "1").
Predictions add leaf values in tree order from 0.0 exactly as ``GBDT::PredictRaw`` does, so
raw scores are bit-identical to ``Booster.predict``; contributions agree with
``pred_contrib`` and ``shap.TreeExplainer`` to rounding (tested to 1e-9 on the raw scale,
observed ~1e-15) and are the same bits for a row whatever batch it is scored in.

Entry points: `raw_score` and `contributions` (used by `learners.boosting`), and
`batch(models)`: inside it, the first request for any of the models' raw scores on a frame
evaluates all of them on that frame in one pass (`PersonalizeModel.predict` wraps the
learner and every bootstrap member in one batch, so the interval costs one pass, not one
LightGBM call per member and arm).

Anything outside that envelope (linear trees, multiclass, early-stopped models, trees with
more than ``MAX_NODES`` internal nodes, numba unavailable, inputs LightGBM would convert
to float32) makes these return None, and callers fall back to LightGBM itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import math
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import pandas as pd

from personalize.data.columns import Column, columns

try:  # numba is the fast path; without it callers use LightGBM (exact, slower)
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    HAVE_NUMBA = False

# LightGBM's kZeroThreshold is the float 1e-35f; as a double:
ZERO_THRESHOLD = float(np.float32(1e-35))
MAX_NODES = 8  # internal nodes per tree: a pattern fits a byte, 256 table entries at most
BLOCK = 256  # rows per block in the kernels (the block's split tests stay in L2)
MIN_ROWS = 512  # raw scores outside a batch: below this LightGBM is as fast
MIN_PARALLEL_ROWS = 4_096  # rows per thread at least (smaller calls run on one thread)

MODE_NUMERIC, MODE_ZERO, MODE_CATEGORICAL = 0, 1, 2
INT_LIMIT = 2147483648.0  # static_cast<int> of values >= 2**31 is INT_MIN on x86 (goes right)

_threads = max(1, int(os.environ.get("PERSONALIZE_THREADS", "1")))
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def set_threads(n: int) -> None:
    """Threads a large call may use (results are identical for any value)."""
    global _threads
    _threads = max(1, int(n))


def threads() -> int:
    return _threads


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < _threads:
            _pool = ThreadPoolExecutor(max_workers=_threads, thread_name_prefix="fast-trees")
        return _pool


def in_parts(
    n: int, work: Callable[[int, int], None], min_rows: int = 4096, align: int = 1
) -> None:
    """Call work(start, stop) over row ranges covering 0..n, on up to `threads()` threads,
    inner edges on multiples of `align` (for kernels that release the GIL and write
    disjoint rows: results are identical for any number of threads)."""
    parts = min(_threads, max(1, n // min_rows))
    if parts <= 1:
        work(0, n)
        return
    edges = (np.linspace(0, n, parts + 1) // align * align).astype(np.int64)
    edges[-1] = n
    pool = _executor()
    futures = [pool.submit(work, a, b) for a, b in itertools.pairwise(edges.tolist()) if b > a]
    for fut in futures:
        fut.result()


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Tree:
    """One LightGBM tree as written in its model string (internal nodes 0..k-1; a child
    index c < 0 is leaf ~c)."""

    num_leaves: int
    split_feature: np.ndarray
    threshold: np.ndarray
    decision_type: np.ndarray
    left_child: np.ndarray
    right_child: np.ndarray
    leaf_value: np.ndarray
    leaf_count: np.ndarray
    internal_count: np.ndarray
    cat_boundaries: np.ndarray
    cat_threshold: np.ndarray

    @property
    def k(self) -> int:
        return self.num_leaves - 1

    def count(self, node: int) -> float:
        """LightGBM's data_count(node): the training rows that reached a node or leaf."""
        return float(self.internal_count[node] if node >= 0 else self.leaf_count[~node])

    def expected_value(self) -> float:
        """Tree::ExpectedValue, same operations in the same order."""
        if self.num_leaves == 1:
            return float(self.leaf_value[0])
        total = float(self.internal_count[0])
        value = 0.0
        for i in range(self.num_leaves):
            value += (float(self.leaf_count[i]) / total) * float(self.leaf_value[i])
        return value


@dataclass(frozen=True)
class ParsedModel:
    feature_names: list[str]
    trees: list[Tree]
    pandas_categorical: list[list[Any]] | None
    supported: str | None  # None when compilable, else why not

    @functools.cached_property
    def layout(self) -> tuple[Any, ...]:
        """Equal layouts read a frame identically (same columns, same category levels)."""
        import json

        return (tuple(self.feature_names), json.dumps(self.pandas_categorical))


def _numbers(text: str, kind: type) -> np.ndarray:
    parts = text.split()
    if kind is float:
        return np.array([float(p) for p in parts], dtype=np.float64)
    return np.array([int(p) for p in parts], dtype=np.int64)


def parse_model_string(text: str) -> ParsedModel:
    """Read LightGBM's text model format (what pickling a booster stores)."""
    import json

    header: dict[str, str] = {}
    trees: list[Tree] = []
    why: str | None = None
    blocks = text.split("\nTree=")
    for line in blocks[0].splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            header[key.strip()] = value.strip()
    for block in blocks[1:]:
        fields: dict[str, str] = {}
        for line in block.split("\nend of trees")[0].splitlines()[1:]:
            if "=" in line:
                key, _, value = line.partition("=")
                fields[key.strip()] = value.strip()
        if not fields:
            continue
        num_leaves = int(fields["num_leaves"])
        if int(fields.get("is_linear", "0")):
            why = "linear trees"
        empty_i = np.zeros(0, dtype=np.int64)
        empty_f = np.zeros(0, dtype=np.float64)
        multi = num_leaves > 1
        trees.append(
            Tree(
                num_leaves=num_leaves,
                split_feature=_numbers(fields["split_feature"], int) if multi else empty_i,
                threshold=_numbers(fields["threshold"], float) if multi else empty_f,
                decision_type=_numbers(fields["decision_type"], int) if multi else empty_i,
                left_child=_numbers(fields["left_child"], int) if multi else empty_i,
                right_child=_numbers(fields["right_child"], int) if multi else empty_i,
                leaf_value=_numbers(fields["leaf_value"], float),
                leaf_count=_numbers(fields.get("leaf_count", ""), int) if multi else empty_i,
                internal_count=(
                    _numbers(fields.get("internal_count", ""), int) if multi else empty_i
                ),
                cat_boundaries=_numbers(fields.get("cat_boundaries", ""), int),
                cat_threshold=_numbers(fields.get("cat_threshold", ""), int),
            )
        )
    if int(header.get("num_tree_per_iteration", "1")) != 1:
        why = "more than one tree per iteration (multiclass)"
    if any(t.k > MAX_NODES for t in trees):
        why = f"trees with more than {MAX_NODES} internal nodes"
    pandas_categorical = None
    marker = "\npandas_categorical:"
    if marker in text:
        raw = text.rsplit(marker, 1)[1].strip().splitlines()[0]
        pandas_categorical = json.loads(raw)
    names = header.get("feature_names", "").split()
    return ParsedModel(names, trees, pandas_categorical, why)


# --------------------------------------------------------------------------- tables


def _pattern_leaves(tree: Tree) -> np.ndarray:
    """Leaf reached under each decision pattern (bit j set: internal node j goes right)."""
    patterns = np.arange(1 << tree.k)
    leaves = np.empty(len(patterns), dtype=np.int64)
    for p in patterns:
        node = 0
        while node >= 0 and tree.k > 0:
            node = tree.right_child[node] if (p >> node) & 1 else tree.left_child[node]
        leaves[p] = ~node if tree.k > 0 else 0
    return leaves


def _paths(tree: Tree) -> list[tuple[int, list[tuple[int, bool, int]]]]:
    """(leaf, [(node, goes_right, child), ...]) for every leaf, root first."""
    out: list[tuple[int, list[tuple[int, bool, int]]]] = []

    def walk(node: int, path: list[tuple[int, bool, int]]) -> None:
        for right, child in ((False, tree.left_child[node]), (True, tree.right_child[node])):
            step = [*path, (node, right, int(child))]
            if child < 0:
                out.append((int(~child), step))
            else:
                walk(int(child), step)

    if tree.k > 0:
        walk(0, [])
    return out


def _shapley_weights(d: int) -> np.ndarray:
    """w[s] = s! (d - s - 1)! / d! for s = 0..d-1."""
    return np.array(
        [math.factorial(s) * math.factorial(d - s - 1) / math.factorial(d) for s in range(d)]
    )


def shap_table(tree: Tree) -> tuple[np.ndarray, np.ndarray]:
    """(features, table[q, pattern]): each split feature's path-dependent TreeSHAP value for
    every decision pattern of the tree, on the raw scale."""
    feats = list(dict.fromkeys(int(f) for f in tree.split_feature))
    index = {f: q for q, f in enumerate(feats)}
    n_pat = 1 << tree.k
    bits = (np.arange(n_pat)[None, :] >> np.arange(max(tree.k, 1))[:, None]) & 1  # k x P
    table = np.zeros((len(feats), n_pat))
    for leaf, path in _paths(tree):
        value = float(tree.leaf_value[leaf])
        # per unique feature on the path: one fraction (0/1 per pattern), zero fraction
        one: dict[int, np.ndarray] = {}
        zero: dict[int, float] = {}
        for node, right, child in path:
            f = int(tree.split_feature[node])
            hot = bits[node] == (1 if right else 0)
            one[f] = one[f] & hot if f in one else hot
            zero[f] = zero.get(f, 1.0) * (tree.count(child) / tree.count(node))
        path_feats = list(one)
        d = len(path_feats)
        w = _shapley_weights(d)
        for f in path_feats:
            # sum over subsets S of the other path features of w(|S|) prod_S o * prod_rest z:
            # the coefficients of prod_{g != f} (z_g + o_g t), weighted by w.
            poly = np.zeros((d, n_pat))
            poly[0] = 1.0
            for g in path_feats:
                if g == f:
                    continue
                o = one[g].astype(float)
                shifted = np.vstack([np.zeros((1, n_pat)), poly[:-1] * o])
                poly = poly * zero[g] + shifted
            total = (w[:, None] * poly).sum(axis=0)
            table[index[f]] += value * (one[f].astype(float) - zero[f]) * total
    return np.asarray(feats, dtype=np.int64), table


# --------------------------------------------------------------------------- kernels


def _jit(fn: Any) -> Any:
    """Compile without the GIL, cached on disk where numba finds a writable place."""
    try:
        return njit(nogil=True, cache=True)(fn)
    except RuntimeError:  # no writable cache location (read-only install): per process
        return njit(nogil=True)(fn)


if HAVE_NUMBA:

    @_jit
    def _decide(xt, b0, m, s_feat, s_mode, s_thr, s_left, s_cat0, s_catn, cat_bits, D):
        """D[u, r] = 1 where row b0 + r goes right at distinct split u."""
        for u in range(len(s_feat)):
            f = s_feat[u]
            thr = s_thr[u]
            dflt = s_left[u]
            mode = s_mode[u]
            if mode == 0:  # numeric; NaN goes to its precomputed side
                for r in range(m):
                    v = xt[f, b0 + r]
                    if (v >= -1.0000000180025095e-35) & (v <= 1.0000000180025095e-35):
                        v = 0.0
                    left = (v <= thr) | ((v != v) & dflt)
                    D[u, r] = np.uint8(not left)
            elif mode == 1:  # missing type Zero: NaN and zero go to the default side
                for r in range(m):
                    v = xt[f, b0 + r]
                    tiny = (v >= -1.0000000180025095e-35) & (v <= 1.0000000180025095e-35)
                    miss = (v != v) | tiny
                    left = dflt if miss else v <= thr
                    D[u, r] = np.uint8(not left)
            else:  # categorical: int(value) in the bitset goes left; NaN, negative go right
                c0 = s_cat0[u]
                cn = s_catn[u]
                for r in range(m):
                    v = xt[f, b0 + r]
                    left = False
                    if v > -1.0 and v < 2147483648.0:
                        c = np.int64(v)
                        word = c >> 5
                        if word < cn:
                            left = ((cat_bits[c0 + word] >> (c & 31)) & 1) == 1
                    D[u, r] = np.uint8(not left)

    @_jit
    def _pattern(D, m, node_u, n0, k, pat):
        for r in range(m):
            pat[r] = 0
        for j in range(k):
            u = node_u[n0 + j]
            sh = np.uint8(j)
            for r in range(m):
                pat[r] = np.uint8(pat[r] | (D[u, r] << sh))

    @_jit
    def _predict_kernel(xt, start, stop, s_feat, s_mode, s_thr, s_left, s_cat0, s_catn,
                        cat_bits, node_u, tree_node0, tree_tab0, tree_out, leaf_tab,
                        out):  # fmt: skip
        D = np.zeros((len(s_feat), min(256, stop - start)), dtype=np.uint8)
        pat = np.zeros(256, dtype=np.uint8)
        for b0 in range(start, stop, 256):
            m = min(256, stop - b0)
            _decide(xt, b0, m, s_feat, s_mode, s_thr, s_left, s_cat0, s_catn, cat_bits, D)
            for t in range(len(tree_out)):
                n0 = tree_node0[t]
                _pattern(D, m, node_u, n0, tree_node0[t + 1] - n0, pat)
                o = tree_out[t]
                tab = tree_tab0[t]
                for r in range(m):  # LightGBM's order: each tree added in turn from 0.0
                    out[o, b0 + r] += leaf_tab[tab + np.int64(pat[r])]

    @_jit
    def _contrib_kernel(xt, start, stop, s_feat, s_mode, s_thr, s_left, s_cat0, s_catn,
                        cat_bits, node_u, tree_node0, tree_feat0, tree_feats, tree_shap0,
                        shap_tab, out):  # fmt: skip
        D = np.zeros((len(s_feat), min(256, stop - start)), dtype=np.uint8)
        pat = np.zeros(256, dtype=np.uint8)
        for b0 in range(start, stop, 256):
            m = min(256, stop - b0)
            _decide(xt, b0, m, s_feat, s_mode, s_thr, s_left, s_cat0, s_catn, cat_bits, D)
            for t in range(len(tree_shap0)):
                n0 = tree_node0[t]
                k = tree_node0[t + 1] - n0
                _pattern(D, m, node_u, n0, k, pat)
                n_pat = 1 << k
                for q in range(tree_feat0[t + 1] - tree_feat0[t]):
                    f = tree_feats[tree_feat0[t] + q]
                    off = tree_shap0[t] + q * n_pat
                    for r in range(m):
                        out[f, b0 + r] += shap_tab[off + np.int64(pat[r])]


# --------------------------------------------------------------------------- forest


class Forest:
    """One or more boosters over the same features, compiled together: each distinct
    split is tested once per row, then every tree reads its pattern from those tests."""

    def __init__(self, models: Sequence[ParsedModel]) -> None:
        first = models[0]
        self.feature_names = first.feature_names
        self.n_features = len(first.feature_names)
        self.pandas_categorical = first.pandas_categorical
        self.n_outputs = len(models)
        self.trees = [tree for parsed in models for tree in parsed.trees]
        splits: dict[tuple[Any, ...], int] = {}
        s_feat, s_mode, s_thr, s_left, s_cat0, s_catn = [], [], [], [], [], []
        cat_bits: list[int] = []
        node_u: list[int] = []
        tree_node0: list[int] = [0]
        tree_tab0: list[int] = []
        tree_out: list[int] = []
        leaf_tab: list[float] = []
        for out, parsed in enumerate(models):
            for tree in parsed.trees:
                for j in range(tree.k):
                    key = _split_key(tree, j)
                    if key not in splits:
                        splits[key] = len(splits)
                        feat, mode, thr, left, bits = key
                        s_feat.append(feat)
                        s_mode.append(mode)
                        s_thr.append(thr)
                        s_left.append(left)
                        s_cat0.append(len(cat_bits))
                        s_catn.append(len(bits))
                        cat_bits.extend(bits)
                    node_u.append(splits[key])
                tree_node0.append(len(node_u))
                tree_tab0.append(len(leaf_tab))
                leaf_tab.extend(tree.leaf_value[_pattern_leaves(tree)].tolist())
                tree_out.append(out)
        self.split_args = (
            np.asarray(s_feat, dtype=np.int64),
            np.asarray(s_mode, dtype=np.int8),
            np.asarray(s_thr, dtype=np.float64),
            np.asarray(s_left, dtype=np.bool_),
            np.asarray(s_cat0, dtype=np.int64),
            np.asarray(s_catn, dtype=np.int64),
            np.asarray(cat_bits, dtype=np.uint32),
            np.asarray(node_u, dtype=np.int64),
            np.asarray(tree_node0, dtype=np.int64),
        )
        self.tree_tab0 = np.asarray(tree_tab0, dtype=np.int64)
        self.tree_out = np.asarray(tree_out, dtype=np.int64)
        self.leaf_tab = np.asarray(leaf_tab, dtype=np.float64)
        self.n_splits = len(splits)
        self._shap: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._lock = threading.Lock()
        base = 0.0
        for tree in self.trees:  # GBDT::PredictContrib adds each ExpectedValue in order
            base += tree.expected_value()
        self.expected_value = base

    def matrix(self, X: pd.DataFrame | np.ndarray) -> np.ndarray | None:
        """Feature-major float64 copy of X as LightGBM reads it, or None where LightGBM
        would read it differently (float32 conversion, another column count)."""
        n_rows = X.shape[0]
        if isinstance(X, pd.DataFrame):
            if X.shape[1] != self.n_features:
                return None
            cols = columns(X)
            cats = [name for name, col in cols.items() if col.levels is not None]
            stored = self.pandas_categorical or []
            if len(cats) != len(stored):
                return None
            levels = dict(zip(cats, stored, strict=True))
            xt = np.empty((self.n_features, n_rows), dtype=np.float64)
            wide = False  # LightGBM reads float64 only if some column is 64-bit
            for j, (name, col) in enumerate(cols.items()):
                if name in levels:
                    xt[j] = _recode(col, list(levels[name]))
                    wide = wide or bool(np.isnan(xt[j]).any())
                elif col.float64:
                    xt[j] = col.values
                    wide = True
                else:
                    return None
            return xt if wide else None
        arr = np.asarray(X)
        if arr.ndim != 2 or arr.shape[1] != self.n_features or arr.dtype != np.float64:
            return None
        return np.ascontiguousarray(arr.T)

    def _run(self, kernel: Any, xt: np.ndarray, args: tuple[Any, ...], out: np.ndarray) -> None:
        in_parts(xt.shape[1], lambda a, b: kernel(xt, a, b, *args, out), MIN_PARALLEL_ROWS, BLOCK)

    def raw_scores(self, xt: np.ndarray) -> np.ndarray:
        """(boosters, rows): each booster's raw score, bit-identical to LightGBM's."""
        out = np.zeros((self.n_outputs, xt.shape[1]), dtype=np.float64)
        if xt.shape[1]:
            args = (*self.split_args, self.tree_tab0, self.tree_out, self.leaf_tab)
            self._run(_predict_kernel, xt, args, out)
        return out

    def _shap_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        with self._lock:
            if self._shap is None:
                feat0, feats, shap0, tabs = [0], [], [], []
                off = 0
                for tree in self.trees:
                    f, table = shap_table(tree)
                    feats.extend(f.tolist())
                    feat0.append(feat0[-1] + len(f))
                    shap0.append(off)
                    tabs.append(table.ravel())
                    off += table.size
                self._shap = (
                    np.asarray(feat0, dtype=np.int64),
                    np.asarray(feats, dtype=np.int64),
                    np.asarray(shap0, dtype=np.int64),
                    np.concatenate(tabs) if tabs else np.zeros(0),
                )
            return self._shap

    def contributions(self, xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(phi rows x features, base rows) on the raw scale, as pred_contrib splits them
        (summed over the forest's trees: use one booster per forest)."""
        tables = self._shap_tables()
        out = np.zeros((self.n_features, xt.shape[1]), dtype=np.float64)
        if xt.shape[1]:
            self._run(_contrib_kernel, xt, (*self.split_args, *tables), out)
        return np.ascontiguousarray(out.T), np.full(xt.shape[1], self.expected_value)


def _recode(col: Column, stored: list[Any]) -> np.ndarray:
    """A categorical's codes as codes over the booster's `stored` categories (NaN where
    absent), as LightGBM maps a frame's categories onto the training ones: by value, with
    pandas' ``set_categories``, unless the two lists are equal (then the codes as they
    are). Categories are compared as the frame holds them (numbers stay numbers: the
    level 1 is not the text "1")."""
    categories = col.categories
    # text categories are their `levels` (no copy: this runs for every scored frame)
    text = categories is None or categories.inferred_type == "string"
    own: list[Any] = (col.levels or []) if text or categories is None else categories.tolist()
    if own == stored:
        return col.values
    dtype = pd.CategoricalDtype(own if categories is None else categories)
    moved = pd.Categorical.from_codes(np.arange(len(own)), dtype=dtype).set_categories(stored)
    lookup = np.append(np.where(moved.codes < 0, np.nan, moved.codes.astype(float)), np.nan)
    return lookup[np.where(np.isnan(col.values), len(own), col.values).astype(np.int64)]


def _split_key(tree: Tree, j: int) -> tuple[int, int, float, bool, tuple[int, ...]]:
    """(feature, mode, threshold, NaN/default side, category bitset): equal keys are the
    same test for every input."""
    dt = int(tree.decision_type[j])
    thr = float(tree.threshold[j])
    feat = int(tree.split_feature[j])
    if dt & 1:  # categorical
        cat_idx = int(thr)
        lo, hi = int(tree.cat_boundaries[cat_idx]), int(tree.cat_boundaries[cat_idx + 1])
        bits = tuple(int(b) for b in tree.cat_threshold[lo:hi])
        return (feat, MODE_CATEGORICAL, 0.0, False, bits)
    default_left = bool(dt & 2)
    missing = (dt >> 2) & 3  # 0 None, 1 Zero, 2 NaN
    if missing == 1:
        return (feat, MODE_ZERO, thr, default_left, ())
    # NaN reads as 0.0 unless the split's missing type is NaN (then: the default side)
    return (feat, MODE_NUMERIC, thr, default_left if missing == 2 else thr >= 0.0, ())


# --------------------------------------------------------------------------- caches

_parsed: weakref.WeakKeyDictionary[Any, ParsedModel | None] = weakref.WeakKeyDictionary()
_single: weakref.WeakKeyDictionary[Any, Forest] = weakref.WeakKeyDictionary()
_cache_lock = threading.RLock()
MAX_COMBINED = 8
T = TypeVar("T")


class _ByModels(Generic[T]):
    """A few values built from a sequence of models, keyed by the models' identities (an
    entry whose models were collected, and whose ids may be reused, is rebuilt)."""

    def __init__(self, size: int = MAX_COMBINED) -> None:
        self.size = size
        self.items: dict[tuple[int, ...], tuple[list[weakref.ref[Any]], T]] = {}

    def get(self, models: Sequence[Any], build: Callable[[], T]) -> T:
        key = tuple(id(m) for m in models)
        with _cache_lock:
            hit = self.items.get(key)
            if hit is not None and all(r() is m for r, m in zip(hit[0], models, strict=True)):
                return hit[1]
            value = build()
            if len(self.items) >= self.size:
                self.items.pop(next(iter(self.items)))
            self.items[key] = ([weakref.ref(m) for m in models], value)
            return value

    def clear(self) -> None:
        with _cache_lock:
            self.items.clear()


_combined: _ByModels[Forest] = _ByModels()


def clear_caches() -> None:
    """Forget every parsed booster, forest and batch plan (e.g. to measure without them)."""
    with _cache_lock:
        for cache in (_parsed, _single, _combined, _plans):
            cache.clear()


def parsed_model(model: Any) -> ParsedModel | None:
    """The parsed booster of a fitted LGBMModel (cached), or None if not compilable."""
    if not HAVE_NUMBA:
        return None
    with _cache_lock:
        try:
            return _parsed[model]
        except KeyError:
            pass
        except TypeError:
            return None
        booster = getattr(model, "booster_", None)
        parsed: ParsedModel | None = None
        if booster is not None and booster.best_iteration <= 0:
            candidate = parse_model_string(booster.model_to_string())
            parsed = candidate if candidate.supported is None else None
        _parsed[model] = parsed
        return parsed


def single_forest(model: Any) -> Forest | None:
    parsed = parsed_model(model)
    if parsed is None:
        return None
    with _cache_lock:
        forest = _single.get(model)
        if forest is None:
            forest = _single[model] = Forest([parsed])
        return forest


def combined_forest(models: Sequence[Any]) -> Forest:
    """A Forest over several compilable boosters of one layout (cached by identity)."""

    def build() -> Forest:
        parsed = [parsed_model(m) for m in models]
        return Forest([p for p in parsed if p is not None])

    return _combined.get(models, build)


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class Plan:
    """The compilable boosters of a batch grouped by layout (computed once per model set:
    a one-patient request opens a batch over a hundred boosters)."""

    layouts: dict[tuple[Any, ...], list[Any]]
    members: dict[int, tuple[Any, ...]]


_plans: _ByModels[Plan] = _ByModels()


def plan(models: Sequence[Any]) -> Plan:
    def build() -> Plan:
        layouts: dict[tuple[Any, ...], list[Any]] = {}
        members: dict[int, tuple[Any, ...]] = {}
        for model in dict.fromkeys(models):  # unique, in order
            parsed = parsed_model(model)
            if parsed is None:
                continue
            layouts.setdefault(parsed.layout, []).append(model)
            members[id(model)] = parsed.layout
        return Plan(layouts, members)

    return _plans.get(models, build)


class Batch:
    """Within a ``batch(models)`` block, the first request for any of the models' raw
    scores on a frame evaluates all of them on that frame in one pass; later requests
    on an equal frame are answered from that pass. Each frame is converted to the
    compiled trees' matrix once per layout (`matrix`), which the drivers reuse."""

    def __init__(self, models: Sequence[Any]) -> None:
        self.plan = plan(models)
        self.done: list[tuple[tuple[Any, ...], Any, dict[int, np.ndarray]]] = []
        self.matrices: list[tuple[tuple[Any, ...], Any, np.ndarray | None]] = []

    def covers(self, models: Sequence[Any]) -> bool:
        return all(id(m) in self.plan.members or parsed_model(m) is None for m in models)

    def matrix(self, forest: Forest, layout: tuple[Any, ...], X: Any) -> np.ndarray | None:
        """`forest.matrix(X)`, remembered for frames seen before in this batch."""
        for seen_layout, frame, xt in self.matrices:
            if seen_layout == layout and _same_frame(frame, X):
                return xt
        xt = forest.matrix(X)
        self.matrices.append((layout, X, xt))
        return xt

    def scores(self, models: Sequence[Any], X: Any) -> list[np.ndarray] | None:
        """Each model's raw scores on X (one pass for all the batch's models of their
        layout, the first time), or None if some model is not in one layout here."""
        layout = self.plan.members.get(id(models[0])) if models else None
        if layout is None or any(self.plan.members.get(id(m)) != layout for m in models):
            return None
        for seen_layout, frame, scores in self.done:
            if seen_layout == layout and _same_frame(frame, X):
                return [scores[id(m)] for m in models]
        group = self.plan.layouts[layout]
        forest = combined_forest(group)
        xt = self.matrix(forest, layout, X)
        if xt is None:
            return None
        scores = dict(zip((id(m) for m in group), forest.raw_scores(xt), strict=True))
        self.done.append((layout, X, scores))
        return [scores[id(m)] for m in models]


_active: contextvars.ContextVar[Batch | None] = contextvars.ContextVar(
    "fast_trees_batch", default=None
)


@contextlib.contextmanager
def batch(models: Sequence[Any]) -> Iterator[None]:
    """Evaluate the given boosters together for every frame the block asks about (an
    enclosing batch that already covers them is kept, with what it has computed)."""
    current = _active.get()
    if not HAVE_NUMBA or not models or (current is not None and current.covers(models)):
        yield
        return
    token = _active.set(Batch(models))
    try:
        yield
    finally:
        _active.reset(token)


def _same_frame(a: Any, b: Any) -> bool:
    """Same values (NaN equal to NaN) and the same column types: LightGBM reads both
    frames identically."""
    if a is b:
        return True
    if not (isinstance(a, pd.DataFrame) and isinstance(b, pd.DataFrame)):
        return False
    if a.shape != b.shape or not a.columns.equals(b.columns):
        return False
    if not a.dtypes.equals(b.dtypes):
        return False
    return bool(a.equals(b))


# --------------------------------------------------------------------------- entry points


def raw_score(model: Any, X: pd.DataFrame | np.ndarray) -> np.ndarray | None:
    """Bit-identical to ``model.predict(X, raw_score=True)``, or None (use LightGBM)."""
    active = _active.get()
    if active is not None:
        scores = active.scores([model], X)
        if scores is not None:
            return scores[0]
    if X.shape[0] < MIN_ROWS:
        return None  # LightGBM is as fast for a handful of rows; same bits either way
    forest = single_forest(model)
    if forest is None:
        return None
    xt = forest.matrix(X)
    return None if xt is None else forest.raw_scores(xt)[0]


def raw_scores_of(models: Sequence[Any], X: pd.DataFrame | np.ndarray) -> np.ndarray | None:
    """`raw_score` of every model, stacked (models x rows), when an active batch covers them
    all: one pass and one stack, not a look-up per model. Else None."""
    active = _active.get()
    scores = active.scores(models, X) if active is not None else None
    return None if scores is None else np.stack(scores)


def contributions(model: Any, X: pd.DataFrame | np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``pred_contrib`` split as (phi, base), exact to rounding, or None (use LightGBM).
    Used for every row count, so a patient's drivers are the same bits in any batch."""
    forest = single_forest(model)
    if forest is None:
        return None
    active = _active.get()
    if active is not None and id(model) in active.plan.members:
        xt = active.matrix(forest, active.plan.members[id(model)], X)
    else:
        xt = forest.matrix(X)
    return None if xt is None else forest.contributions(xt)


def warm_up(explained: Sequence[Any], batched: Sequence[Any]) -> None:
    """Compile trees ahead of the first request: the `explained` boosters with their SHAP
    tables (drivers), and the `batched` boosters together (what one predict evaluates)."""
    for model in explained:
        forest = single_forest(model)
        if forest is not None:
            forest._shap_tables()
    everything = [m for m in batched if parsed_model(m) is not None]
    if everything:
        forest = combined_forest(everything)
        forest.raw_scores(np.full((forest.n_features, 1), np.nan))  # load the kernel
