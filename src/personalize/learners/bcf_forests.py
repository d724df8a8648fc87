"""BCF's sampled forests as flat arrays, and the compiled kernels that evaluate and explain
them: every kept draw's trees in one set of node arrays (`TreeArrays`), the draws that
share a tree's shape walked once (`SharedShapes`), the roots as step functions of one
feature each (`RootSteps`), exact path attributions of the posterior-mean forest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from personalize import fast_trees

ROW_BLOCK = 256  # rows evaluated per tree at a time (the tree's nodes stay in cache)
# rows explained at a time: a tree's splits cost little per row (vectorized) and much per
# block, and the block's features and attributions (rows x 2 x features) still fit in L2
PATH_BLOCK = 1024


@dataclass(frozen=True)
class SharedShapes:
    """A forest's distinct tree shapes and, per shape, the draws that have it with their leaf
    values. Consecutive posterior draws mostly keep a tree's splits and redraw only its leaf
    values, so a row needs one walk per shape (about a fifth of the trees), not per tree.

    Shape h has nodes root[h]..root[h+1] (children as offsets from root[h], preorder, leaves
    with feature -1) and uses uses[h]..uses[h+1], one per draw that has it (`draw`); use j's
    value of local node q is values[table[h] + j * size + q], size = root[h+1] - root[h]
    (zero for a split; a shape twice in one draw has the sum of both copies' values)."""

    root: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    uses: np.ndarray
    draw: np.ndarray
    table: np.ndarray
    values: np.ndarray

    @classmethod
    def of(cls, forest: TreeArrays) -> SharedShapes:
        shape, first = forest.shapes()
        size = np.diff(np.append(forest.start, len(forest.feature)))  # nodes per tree
        m = size[first]
        root = np.concatenate([[0], np.cumsum(m)])
        # one use per (shape, draw), ordered by shape, then draw
        draw_of = np.arange(len(shape)) // forest.trees
        pairs, use_of = np.unique(shape * forest.draws + draw_of, return_inverse=True)
        uses = np.searchsorted(pairs // forest.draws, np.arange(len(first) + 1))
        nodes = np.repeat(forest.start[first] - root[:-1], m) + np.arange(root[-1])
        base = np.repeat(forest.start[first], m)
        table = np.concatenate([[0], np.cumsum(np.diff(uses) * m)])
        # every node of every tree into its use's table (added in tree order)
        tree = np.repeat(np.arange(len(shape)), size)
        h = shape[tree]
        local = np.arange(len(forest.feature)) - np.repeat(forest.start, size)
        values = np.zeros(int(table[-1]))
        np.add.at(values, table[h] + (use_of[tree] - uses[h]) * m[h] + local, forest.value)
        return cls(
            root=root, feature=forest.feature[nodes], threshold=forest.threshold[nodes],
            left=np.where(forest.left[nodes] >= 0, forest.left[nodes] - base, -1),
            right=np.where(forest.right[nodes] >= 0, forest.right[nodes] - base, -1),
            uses=uses, draw=pairs % forest.draws, table=table, values=values,
        )  # fmt: skip


@dataclass(frozen=True)
class RootSteps:
    """A forest's root splits as one step function per feature. A root split's path term
    depends on its own feature alone (every row passes the root), so all roots on feature
    f add up to a function of x[f] that changes only at their thresholds: a row looks it
    up once per feature (a binary search) instead of walking every tree's root.

    cuts[cut[f]:cut[f+1]] are the distinct thresholds of the roots on f, sorted;
    `root_cut` is each tree's root's cut (-1 for a tree that is a single leaf) and `deep`
    lists the trees with a split below the root (those splits are walked)."""

    cut: np.ndarray
    cuts: np.ndarray
    root_cut: np.ndarray
    deep: np.ndarray

    @classmethod
    def of(cls, forest: TreeArrays) -> RootSteps:
        size = np.diff(np.append(forest.start, len(forest.feature)))
        split = forest.feature[forest.start] >= 0
        roots = forest.start[split]
        features = int(forest.feature.max()) + 1 if len(forest.feature) else 0
        pairs = np.column_stack([forest.feature[roots], forest.threshold[roots]])
        distinct, which = np.unique(pairs, axis=0, return_inverse=True)  # by feature, then cut
        root_cut = np.full(len(forest.start), -1, dtype=np.int64)
        root_cut[split] = np.ravel(which)
        return cls(
            cut=np.searchsorted(distinct[:, 0], np.arange(features + 1)).astype(np.int64),
            cuts=np.ascontiguousarray(distinct[:, 1], dtype=np.float64),
            root_cut=root_cut,
            deep=np.flatnonzero(size > 3).astype(np.int64),
        )

    def values(self, forest: TreeArrays, scale: float) -> np.ndarray:
        """The step functions: feature f's at values[cut[f] + f + j] for a row with x[f]
        above exactly j of its cuts (j = 0 .. the cuts on f). Its roots with a cut at or
        above x[f] send the row left, the others right; each adds the walk's own term,
        scale * (mean[child] - mean[root])."""
        split = self.root_cut >= 0
        roots = forest.start[split]
        where = self.root_cut[split]
        k = len(self.cuts)
        left = np.bincount(
            where, scale * (forest.mean[forest.left[roots]] - forest.mean[roots]), minlength=k
        )
        right = np.bincount(
            where, scale * (forest.mean[forest.right[roots]] - forest.mean[roots]), minlength=k
        )
        out = np.empty(k + len(self.cut) - 1)
        for f in range(len(self.cut) - 1):
            a, b = int(self.cut[f]), int(self.cut[f + 1])
            below = np.concatenate([[0.0], np.cumsum(right[a:b])])  # cuts below x go right
            above = np.concatenate([np.cumsum(left[a:b][::-1])[::-1], [0.0]])
            out[a + f : b + f + 1] = below + above
        return out


@dataclass(frozen=True)
class TreeArrays:
    """Every tree of every kept draw of one forest, flattened: node arrays with absolute
    child indices (leaves have feature -1), `start[d * trees + t]` the root of draw d's
    tree t, and each node's expected value under the training rows (`mean`), which the
    path attributions read."""

    trees: int
    draws: int
    start: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    mean: np.ndarray

    @classmethod
    def from_json(cls, container: dict, keep: np.ndarray, X_train: np.ndarray) -> TreeArrays:
        trees = int(container["num_trees"])
        feature: list[int] = []
        threshold: list[float] = []
        left: list[int] = []
        right: list[int] = []
        value: list[float] = []
        start = []
        for d in keep:
            forest = container[f"forest_{int(d)}"]
            for t in range(trees):
                tree = forest[f"tree_{t}"]
                start.append(len(feature))
                order, stack = [], [0]  # reachable nodes, depth first (deleted ones dropped)
                while stack:
                    node = stack.pop()
                    order.append(node)
                    if tree["node_type"][node] != 0:
                        stack += [tree["right"][node], tree["left"][node]]
                renumber = {node: len(feature) + i for i, node in enumerate(order)}
                for node in order:
                    if tree["node_type"][node] == 2:
                        raise ValueError("categorical splits are not expected (one-hot design)")
                    split = tree["node_type"][node] != 0
                    feature.append(tree["split_index"][node] if split else -1)
                    threshold.append(tree["threshold"][node] if split else 0.0)
                    left.append(renumber[tree["left"][node]] if split else -1)
                    right.append(renumber[tree["right"][node]] if split else -1)
                    value.append(0.0 if split else tree["leaf_value"][node])
        arrays = dict(
            start=np.asarray(start, dtype=np.int64),
            feature=np.asarray(feature, dtype=np.int64),
            threshold=np.asarray(threshold, dtype=np.float64),
            left=np.asarray(left, dtype=np.int64),
            right=np.asarray(right, dtype=np.int64),
            value=np.asarray(value, dtype=np.float64),
        )
        mean = _node_means(X_train, *arrays.values())
        forest = cls(trees=trees, draws=len(keep), mean=mean, **arrays)
        forest.shared()  # now rather than on the first scoring call
        return forest

    def sums(self, X: np.ndarray) -> np.ndarray:
        """Each draw's sum of trees for each row (rows x draws): each distinct tree shape is
        evaluated once per row and its leaf's value added for every draw that has it (the
        same numbers as `sums_by_tree` up to the order of the additions)."""
        shared = self.shared()
        out = np.empty((X.shape[0], self.draws))
        fast_trees.in_parts(len(X), lambda a, b: _shared_sums(
            X, a, b, shared.root, shared.feature, shared.threshold, shared.left,
            shared.right, shared.uses, shared.draw, shared.table, shared.values, out,
        ))  # fmt: skip
        return out

    def sums_by_tree(self, X: np.ndarray) -> np.ndarray:
        """`sums` by walking every tree of every draw (the reference `sums` is checked and
        timed against)."""
        out = np.zeros((X.shape[0], self.draws))
        fast_trees.in_parts(len(X), lambda a, b: _forest_sums(
            X, a, b, self.trees, self.draws, self.start, self.feature, self.threshold,
            self.left, self.right, self.value, out,
        ))  # fmt: skip
        return out

    def shared(self) -> SharedShapes:
        """The distinct shapes and each draw's leaf values on them, built on first use and
        kept as a plain attribute (so they pickle with the model; a model pickled before
        they existed builds them when it first scores)."""
        shared: SharedShapes | None = self.__dict__.get("shared_")
        if shared is None:
            shared = SharedShapes.of(self)
            object.__setattr__(self, "shared_", shared)  # a cache: the trees are unchanged
        return shared

    def shapes(self) -> tuple[np.ndarray, np.ndarray]:
        """Each tree's shape (its splits: features, thresholds, children) numbered in order
        of first appearance, and the first tree of each shape."""
        size = np.diff(np.append(self.start, len(self.feature)))
        child = np.where(self.left >= 0, self.left - np.repeat(self.start, size), -1)
        columns = [a.tobytes() for a in (self.feature, self.threshold, child)]  # 8-byte items
        ids: dict[tuple[bytes, ...], int] = {}
        shape = np.empty(len(self.start), dtype=np.int64)
        ends = (self.start + size).tolist()
        for k, (a, b) in enumerate(zip(self.start.tolist(), ends, strict=True)):
            shape[k] = ids.setdefault(tuple(c[8 * a : 8 * b] for c in columns), len(ids))
        return shape, np.unique(shape, return_index=True)[1]

    def merged(self) -> TreeArrays:
        """The sum of all draws' trees as one forest with each distinct tree shape (same
        splits) once and the node means of its copies added: a path attribution is linear
        in the node means, so the posterior-mean forest is explained at the cost of its
        distinct shapes (most trees survive several draws unchanged)."""
        shape, first = self.shapes()
        size = np.diff(np.append(self.start, len(self.feature)))
        m = size[first]
        start = np.concatenate([[0], np.cumsum(m)])
        nodes = np.repeat(self.start[first] - start[:-1], m) + np.arange(start[-1])
        mean = np.zeros(start[-1])  # every copy's node means, added in tree order
        local = np.arange(len(self.feature)) - np.repeat(self.start, size)
        np.add.at(mean, np.repeat(start[shape], size) + local, self.mean)
        shift = np.repeat(start[:-1] - self.start[first], m)
        merged = TreeArrays(
            trees=len(first), draws=1, start=start[:-1], feature=self.feature[nodes],
            threshold=self.threshold[nodes],
            left=np.where(self.left[nodes] >= 0, self.left[nodes] + shift, -1),
            right=np.where(self.right[nodes] >= 0, self.right[nodes] + shift, -1),
            value=np.zeros(start[-1]), mean=mean,
        )  # fmt: skip
        merged.root_steps()  # now rather than on the first explaining call
        return merged

    def attributions(self, X: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
        """Path attributions of scale * (the sum of all trees): (phi rows x columns, base),
        base + phi.sum(1) equal to that sum. Call on `merged()`. The root splits' terms are
        looked up per feature in their step functions (`RootSteps`) and the deeper splits
        walked in blocks of rows: the same numbers as `attributions_by_tree` up to the
        order of the additions."""
        base = scale * float(self.mean[self.start].sum())
        roots = self.root_steps()
        steps = roots.values(self, scale)
        # each split's term for going left and for going right (same operations as the
        # walk's, so the same bits per term); a leaf's are unused
        child_l = np.where(self.left >= 0, self.left, np.arange(len(self.left)))
        child_r = np.where(self.right >= 0, self.right, np.arange(len(self.right)))
        to_left = scale * (self.mean[child_l] - self.mean)
        to_right = scale * (self.mean[child_r] - self.mean)
        phi = np.empty(X.shape)
        fast_trees.in_parts(len(X), lambda a, b: _path_attributions(
            X, a, b, roots.cut, roots.cuts, steps, roots.deep, self.start, self.feature,
            self.threshold, self.left, self.right, to_left, to_right, phi,
        ))  # fmt: skip
        return phi, base

    def attributions_by_tree(self, X: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
        """`attributions` by walking every row down every tree (the reference
        `attributions` is checked and timed against)."""
        base = scale * float(self.mean[self.start].sum())
        phi = np.zeros(X.shape)
        fast_trees.in_parts(len(X), lambda a, b: _attributions(
            X, a, b, scale, self.trees, self.start, self.feature, self.threshold,
            self.left, self.right, self.mean, phi,
        ))  # fmt: skip
        return phi, base

    def root_steps(self) -> RootSteps:
        """The root splits' step functions, built on first use and kept like `shared`."""
        roots: RootSteps | None = self.__dict__.get("root_steps_")
        if roots is None:
            roots = RootSteps.of(self)
            object.__setattr__(self, "root_steps_", roots)
        return roots


@numba.njit(nogil=True, cache=True)
def _transpose(X, s, n, xt):
    """Rows s..s+n of X into the columns of xt: a block's loops over rows then read
    contiguous memory."""
    for i in range(n):
        for f in range(X.shape[1]):
            xt[f, i] = X[s + i, f]


@numba.njit(nogil=True, cache=True)
def _leaf(x, i, node, feature, threshold, left, right, value):
    while feature[node] >= 0:
        node = left[node] if x[i, feature[node]] <= threshold[node] else right[node]
    return value[node]


@numba.njit(nogil=True, cache=True)
def _forest_sums(X, a, b, trees, draws, start, feature, threshold, left, right, value, out):
    """out[i, d] = sum of draw d's trees at row i, for rows a..b. Blocks of rows, each tree
    over a block: its nodes stay in cache (the sum's order is the same for every block)."""
    for s in range(a, b, ROW_BLOCK):
        e = min(b, s + ROW_BLOCK)
        for d in range(draws):
            for t in range(trees):
                root = start[d * trees + t]
                for i in range(s, e):
                    out[i, d] += _leaf(X, i, root, feature, threshold, left, right, value)


@numba.njit(nogil=True, cache=True)
def _shared_sums(X, a, b, root, feature, threshold, left, right, uses, draw, table, values, out):
    """out[i, d] = sum of draw d's trees at row i, for rows a..b (see `SharedShapes`), in
    blocks of rows: the block's features are transposed and its sums accumulated draw by
    draw, so the loops over the block's rows read and write contiguous memory (and
    vectorize). A single leaf adds a constant and a stump selects one of two values; a
    deeper shape walks all rows through its splits in preorder (a row moves on from the
    node it has reached), then each use adds the value of the row's leaf. Every row's sums
    are added in the same order, whatever the blocks."""
    leaf = np.zeros(ROW_BLOCK, dtype=np.int64)
    acc = np.empty((out.shape[1], ROW_BLOCK))
    xt = np.empty((X.shape[1], ROW_BLOCK))
    for s in range(a, b, ROW_BLOCK):
        n = min(b, s + ROW_BLOCK) - s
        _transpose(X, s, n, xt)
        acc[:, :] = 0.0
        for h in range(len(root) - 1):
            r, size = root[h], root[h + 1] - root[h]
            u0, k, v0 = uses[h], uses[h + 1] - uses[h], table[h]
            if size == 1:
                for j in range(k):
                    row = acc[draw[u0 + j]]
                    c = values[v0 + j]
                    for i in range(n):
                        row[i] += c
            elif size == 3:
                col, t, lo, hi = xt[feature[r]], threshold[r], left[r], right[r]
                for j in range(k):
                    row = acc[draw[u0 + j]]
                    vl, vr = values[v0 + j * 3 + lo], values[v0 + j * 3 + hi]
                    for i in range(n):
                        row[i] += vl if col[i] <= t else vr
            else:
                leaf[:n] = 0
                for q in range(size):
                    if feature[r + q] < 0:
                        continue
                    col, t, lo, hi = xt[feature[r + q]], threshold[r + q], left[r + q], right[r + q]
                    for i in range(n):
                        nxt = lo if col[i] <= t else hi
                        leaf[i] = nxt if leaf[i] == q else leaf[i]
                for j in range(k):
                    row = acc[draw[u0 + j]]
                    tbl = values[v0 + j * size : v0 + (j + 1) * size]
                    for i in range(n):
                        row[i] += tbl[leaf[i]]
        for i in range(n):
            for d in range(out.shape[1]):
                out[s + i, d] = acc[d, i]


@numba.njit(nogil=True, cache=True)
def _node_means(X, start, feature, threshold, left, right, value):
    """Each node's mean leaf value over the training rows that reach it (its own value for
    a leaf; a node no row reaches takes the plain mean of its children)."""
    count = np.zeros(len(feature))
    for root in start:
        for i in range(X.shape[0]):
            node = root
            while feature[node] >= 0:
                count[node] += 1.0
                node = left[node] if X[i, feature[node]] <= threshold[node] else right[node]
            count[node] += 1.0
    mean = np.zeros(len(feature))
    for node in range(len(feature) - 1, -1, -1):  # children follow their parents
        if feature[node] < 0:
            mean[node] = value[node]
        else:
            cl, cr = count[left[node]], count[right[node]]
            if cl + cr > 0:
                mean[node] = (cl * mean[left[node]] + cr * mean[right[node]]) / (cl + cr)
            else:
                mean[node] = 0.5 * (mean[left[node]] + mean[right[node]])
    return mean


@numba.njit(nogil=True, cache=True)
def _attributions(X, a, b, scale, trees, start, feature, threshold, left, right, mean, phi):
    """phi[i, f] += scale * (mean[child] - mean[node]) at every split on f along row i's
    path in every tree, for rows a..b (blocked like `_forest_sums`)."""
    for s in range(a, b, ROW_BLOCK):
        e = min(b, s + ROW_BLOCK)
        for t in range(trees):
            root = start[t]
            for i in range(s, e):
                node = root
                while feature[node] >= 0:
                    f = feature[node]
                    nxt = left[node] if X[i, f] <= threshold[node] else right[node]
                    phi[i, f] += scale * (mean[nxt] - mean[node])
                    node = nxt


@numba.njit(nogil=True, cache=True)
def _path_attributions(
    X, a, b, cut, cuts, steps, deep, start, feature, threshold, left, right, to_left,
    to_right, phi,
):  # fmt: skip
    """phi[i, f] = the sum of the terms of `_attributions`, for rows a..b, in blocks of
    rows with the block's features transposed and its attributions accumulated per
    feature (the loops over rows read and write contiguous memory, and vectorize). The
    roots' terms come from their step functions (`RootSteps`); below the root, a tree
    with one more split adds that split's term to the rows on its side of the root, a
    deeper one walks all rows through its splits in preorder (a row moves on from the
    node it has reached). Every row's sums are added in the same order, whatever the
    blocks."""
    features = len(cut) - 1
    node = np.zeros(PATH_BLOCK, dtype=np.int64)
    xt = np.empty((X.shape[1], PATH_BLOCK))
    acc = np.empty((X.shape[1], PATH_BLOCK))
    for s in range(a, b, PATH_BLOCK):
        n = min(b, s + PATH_BLOCK) - s
        _transpose(X, s, n, xt)
        acc[:, :] = 0.0
        for f in range(features):
            k0, k1 = cut[f], cut[f + 1]
            if k1 == k0:
                continue
            col, row = xt[f], acc[f]
            for i in range(n):
                x, lo, hi = col[i], k0, k1
                while lo < hi:  # the first cut at or above x (k1 if none, or x is NaN)
                    mid = (lo + hi) >> 1
                    if x <= cuts[mid]:
                        hi = mid
                    else:
                        lo = mid + 1
                row[i] = steps[lo + f]
        for t in deep:
            r = start[t]
            size = (start[t + 1] if t + 1 < len(start) else len(feature)) - r
            col_r, cut_r = xt[feature[r]], threshold[r]
            if size == 5:  # one split below the root, on its left or on its right
                q = r + 1 if feature[r + 1] >= 0 else r + 2
                col_q, cut_q, row = xt[feature[q]], threshold[q], acc[feature[q]]
                vl, vr = to_left[q], to_right[q]
                if q == r + 1:
                    for i in range(n):
                        v = vl if col_q[i] <= cut_q else vr
                        row[i] += v if col_r[i] <= cut_r else 0.0
                else:
                    for i in range(n):
                        v = vl if col_q[i] <= cut_q else vr
                        row[i] += 0.0 if col_r[i] <= cut_r else v
                continue
            lo_r, hi_r = left[r] - r, right[r] - r
            for i in range(n):
                node[i] = lo_r if col_r[i] <= cut_r else hi_r
            for q in range(1, size):
                if feature[r + q] < 0:
                    continue
                col_q, cut_q, row = xt[feature[r + q]], threshold[r + q], acc[feature[r + q]]
                lo, hi = left[r + q] - r, right[r + q] - r
                vl, vr = to_left[r + q], to_right[r + q]
                for i in range(n):
                    go = node[i] == q
                    le = col_q[i] <= cut_q
                    row[i] += (vl if le else vr) if go else 0.0
                    nxt = lo if le else hi
                    node[i] = nxt if go else node[i]
        for i in range(n):
            for f in range(X.shape[1]):
                phi[s + i, f] = acc[f, i]
