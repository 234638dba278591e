"""Route matrices in factored form: R = sum_k onehot(keys[k]) @ tables[k].

A flow's route in a switched cluster is a few pieces that many flows share: its source GPU's access
links (GPU -> NIC -> leaf), its destination's access links, and the ECMP fractions between its two
leaves, which every flow between those leaves has in common. Writing the (flows x links) route
matrix as a sum of one-hot "which piece" matrices times small tables of pieces keeps the size
O(flows + table non-zeros) instead of O(flows x links per route): an all-to-all over 2048 GPUs on a
32-spine fat-tree is 4.2 M flows x 3 keys instead of 281 M non-zeros.

``link_alias`` records links whose columns of R are identical (ECMP fat-trees have many: every
uplink of a leaf carries the same share of the same flows). The tables then hold only each group's
representative column (``link_alias[l] == l``); column l of R equals column ``link_alias[l]``.
``to_csr`` writes the columns back out, so nothing is lost; the max-min solver uses the
representative with the group's smallest capacity (only it can bind).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True, eq=False)
class FactoredRoutes:
    """(n_flows x n_links) route matrix ``sum_k P_k @ tables[k]``, ``P_k[i, keys[k][i]] = 1``.

    keys[k]: (n_flows,) integer row of ``tables[k]`` used by each flow; -1 = none.
    tables[k]: CSR (rows_k x n_links) of byte fractions.
    link_alias: (n_links,) or None; see the module docstring.
    """

    keys: tuple[np.ndarray, ...]
    tables: tuple[sp.csr_matrix, ...]
    link_alias: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.tables) or not self.tables:
            raise ValueError("FactoredRoutes needs one key array per table, at least one")
        n = len(self.keys[0])
        n_links = self.tables[0].shape[1]
        for k, t in zip(self.keys, self.tables):
            if k.ndim != 1 or len(k) != n:
                raise ValueError("every key array must be 1-D with one entry per flow")
            if t.shape[1] != n_links:
                raise ValueError("every table must have the same number of link columns")
            if len(k) and (k.min() < -1 or k.max() >= t.shape[0]):
                raise ValueError("keys must lie in -1..rows-1 of their table")
        if self.link_alias is not None and self.link_alias.shape != (n_links,):
            raise ValueError("link_alias must have one entry per link")

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.keys[0]), self.tables[0].shape[1])

    @property
    def n_flows(self) -> int:
        return len(self.keys[0])

    @property
    def n_links(self) -> int:
        return self.tables[0].shape[1]

    def expanded_tables(self) -> tuple[sp.csr_matrix, ...]:
        """The tables with every aliased link's column filled in from its representative."""
        if self.link_alias is None:
            return self.tables
        n_links = self.n_links
        alias = np.asarray(self.link_alias, dtype=np.int64)
        # E (n_links x n_links): column l = unit vector at alias[l]; T @ E copies columns.
        expand = sp.csr_matrix((np.ones(n_links), (alias, np.arange(n_links))),
                               shape=(n_links, n_links))
        out = []
        for t in self.tables:
            e = (t @ expand).tocsr()
            e.sort_indices()
            out.append(e)
        return tuple(out)

    def to_csr(self) -> sp.csr_matrix:
        """The plain (n_flows x n_links) route matrix, sorted indices."""
        n, n_links = self.shape
        parts = []
        for k, t in zip(self.keys, self.expanded_tables()):
            ok = np.flatnonzero(k >= 0)
            p = sp.csr_matrix((np.ones(len(ok)), (ok, k[ok])), shape=(n, t.shape[0]))
            parts.append(p @ t)
        out = parts[0]
        for p in parts[1:]:
            out = out + p
        out = sp.csr_matrix(out)
        out.sum_duplicates()
        out.sort_indices()
        return out
