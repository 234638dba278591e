"""Rank <-> coordinates <-> GPU for TP, CP, EP, DP and PP, following Megatron-LM's RankGenerator.

Global ranks are laid out as a mixed-radix number whose digits are the parallel dimensions, in
``order`` (innermost first). The default ``"tp-cp-ep-dp-pp"`` puts TP innermost (consecutive global
ranks share a TP group, so TP stays on NVLink) and PP outermost.

Two views of the same ranks exist, as in Megatron-Core's decoupled expert parallelism:

- dense (attention, dense FFN):  digits ``tp, cp, dp, pp`` (the ``ep`` digit has size 1);
- expert (MoE layers):           digits ``expert_tp, ep, edp, pp`` (the ``cp`` digit has size 1),
  where ``edp = tp*cp*dp / (expert_tp*ep)``.

With PP last, both views share the PP digit, so within one pipeline stage the ``tp*cp*dp`` ranks
are simply re-factored as ``expert_tp * ep * edp`` (expert_tp innermost).
"""

from __future__ import annotations

from math import prod
from typing import Any

import numpy as np

from simmoe.errors import InputError

DIMS = ("tp", "cp", "ep", "dp", "pp")
DEFAULT_ORDER = "tp-cp-ep-dp-pp"
ORDER_FIELD = "parallelism.order"
ORDER_ALLOWED = (
    "'-'-joined names from tp, cp, ep, dp, pp, each at most once, innermost first; a name may be "
    "left out only if that dimension has size 1 (e.g. 'tp-cp-ep-dp-pp', 'tp-cp-ep-pp-dp', 'dp-tp-pp')"
)

# groups(dim) -> (view, digits that vary inside one group). Digits are named as in `order`.
_GROUP_DIGITS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tp": ("dense", ("tp",)),
    "cp": ("dense", ("cp",)),
    "dp": ("dense", ("dp",)),
    "pp": ("dense", ("pp",)),
    "dp_cp": ("dense", ("cp", "dp")),  # dense-gradient reduction group (Megatron: "dp-cp")
    "ep": ("expert", ("ep",)),
    "expert_tp": ("expert", ("tp",)),
    "edp": ("expert", ("dp",)),  # expert-gradient reduction group
    "expert_tp_ep": ("expert", ("tp", "ep")),  # Megatron's expert tensor-and-model-parallel group
}
GROUP_DIMS = tuple(_GROUP_DIGITS)

_DENSE_COORDS = ("tp", "cp", "dp", "pp")
_EXPERT_COORDS = ("expert_tp", "ep", "edp", "pp")
# expert-view coordinate name -> digit name in `order`
_EXPERT_DIGIT = {"expert_tp": "tp", "ep": "ep", "edp": "dp", "pp": "pp"}


def _positive_int(value: Any, field: str) -> int:
    # bool is an int subclass; "tp: true" in YAML is a mistake, not 1.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InputError(
            "must be a positive integer", field=field, value=value, has_value=True, allowed="1, 2, 3, ..."
        )
    if value < 1:
        raise InputError("must be a positive integer", field=field, value=value, allowed="1, 2, 3, ...")
    return int(value)


def parse_order(order: Any, sizes: dict[str, int]) -> tuple[str, ...]:
    """Validate ``order`` and return all five digit names, innermost first.

    ``sizes`` maps each name in DIMS to the largest size that digit takes in either view; names left
    out of ``order`` must have size 1 and are appended (their position does not change any rank).
    """
    if not isinstance(order, str) or not order.strip():
        raise InputError("must be a non-empty string", field=ORDER_FIELD, value=order, has_value=True,
                         allowed=ORDER_ALLOWED)
    names = [t.strip() for t in order.lower().split("-")]
    unknown = [n for n in names if n not in DIMS]
    if unknown:
        raise InputError(f"unknown dimension {unknown[0]!r}", field=ORDER_FIELD, value=order,
                         allowed=ORDER_ALLOWED)
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise InputError(f"dimension {dups[0]!r} appears more than once", field=ORDER_FIELD,
                         value=order, allowed=ORDER_ALLOWED)
    missing_big = [n for n in DIMS if n not in names and sizes[n] > 1]
    if missing_big:
        n = missing_big[0]
        raise InputError(f"leaves out {n!r}, whose size is {sizes[n]} (> 1)", field=ORDER_FIELD,
                         value=order, allowed=ORDER_ALLOWED)
    return tuple(names) + tuple(n for n in DIMS if n not in names)


def _group_matrix(order: tuple[str, ...], sizes: dict[str, int], varying: tuple[str, ...]) -> np.ndarray:
    """(n_groups x group_size) global ranks, in Megatron's generate_masked_orthogonal_rank_groups order:
    groups enumerated with the innermost fixed digit fastest; inside a group, innermost varying digit
    fastest."""
    radix = [sizes[n] for n in order]  # innermost first
    grid = np.arange(prod(radix), dtype=np.int64).reshape(radix[::-1])  # axis 0 = outermost digit
    outer_first = order[::-1]
    fixed_axes = [i for i, n in enumerate(outer_first) if n not in varying]
    varying_axes = [i for i, n in enumerate(outer_first) if n in varying]
    group_size = prod(sizes[n] for n in varying)
    return np.ascontiguousarray(grid.transpose(fixed_axes + varying_axes).reshape(-1, group_size))


def _digits(rank: np.ndarray, order: tuple[str, ...], sizes: dict[str, int]) -> dict[str, np.ndarray]:
    out, stride = {}, 1
    for n in order:
        out[n] = (rank // stride) % sizes[n]
        stride *= sizes[n]
    return out


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


class ParallelLayout:
    """Where every global rank sits in the TP/CP/EP/DP/PP grid, and which GPU runs it.

    Parameters are plain ints; each error names the ``parallelism.*`` field at fault.
    ``rank_to_gpu`` (optional) maps global rank r to a GPU id (default: GPU r); it must be distinct
    non-negative ints, one per rank. ``world_size`` (optional) is checked against tp*cp*dp*pp.
    """

    def __init__(
        self,
        tp: int,
        pp: int,
        cp: int,
        dp: int,
        ep: int,
        expert_tp: int = 1,
        vpp: int = 1,
        order: str = DEFAULT_ORDER,
        *,
        rank_to_gpu: Any = None,
        world_size: int | None = None,
    ) -> None:
        self.tp = _positive_int(tp, "parallelism.tp")
        self.pp = _positive_int(pp, "parallelism.pp")
        self.cp = _positive_int(cp, "parallelism.cp")
        self.dp = _positive_int(dp, "parallelism.dp")
        self.ep = _positive_int(ep, "parallelism.ep")
        self.expert_tp = _positive_int(expert_tp, "parallelism.expert_tp")
        self.vpp = _positive_int(vpp, "parallelism.vpp")
        if self.vpp > 1 and self.pp == 1:
            raise InputError("an interleaved (virtual) pipeline needs parallelism.pp > 1",
                             field="parallelism.vpp", value=self.vpp, allowed="1 when parallelism.pp=1")

        dense_ranks = self.tp * self.cp * self.dp
        self.world_size = dense_ranks * self.pp
        if world_size is not None and _positive_int(world_size, "world_size") != self.world_size:
            raise InputError(
                f"tp*cp*dp*pp = {self.tp}*{self.cp}*{self.dp}*{self.pp} = {self.world_size} does not "
                f"match the world size {world_size}",
                field="parallelism", allowed=f"sizes whose product is {world_size}")
        expert_ranks = self.expert_tp * self.ep
        if dense_ranks % expert_ranks:
            raise InputError(
                f"ep*expert_tp = {self.ep}*{self.expert_tp} = {expert_ranks} does not divide "
                f"tp*cp*dp = {self.tp}*{self.cp}*{self.dp} = {dense_ranks} (the ranks of one pipeline "
                "stage, which MoE layers re-factor as expert_tp x ep x edp)",
                field="parallelism.ep", value=self.ep, allowed=f"ep*expert_tp dividing {dense_ranks}")
        self.edp = dense_ranks // expert_ranks

        self._dense_sizes = {"tp": self.tp, "cp": self.cp, "ep": 1, "dp": self.dp, "pp": self.pp}
        self._expert_sizes = {"tp": self.expert_tp, "cp": 1, "ep": self.ep, "dp": self.edp, "pp": self.pp}
        self._order = parse_order(
            order, {n: max(self._dense_sizes[n], self._expert_sizes[n]) for n in DIMS})
        # Megatron's rule: with PP not outermost, a PP digit shared by both views needs edp == dp.
        if self._order[-1] != "pp" and self.pp > 1 and self.edp != self.dp:
            raise InputError(
                f"with pp not last (pp={self.pp}), the MoE layers' expert data-parallel size "
                f"edp = {self.edp} must equal dp = {self.dp}",
                field=ORDER_FIELD, value=order, allowed="an order ending in 'pp', or sizes with edp == dp")
        self._groups: dict[str, np.ndarray] = {}
        if not np.array_equal(self.groups("pp"), self._groups_in("expert", ("pp",))):
            raise InputError("gives the dense and the MoE layers different pipeline groups",
                             field=ORDER_FIELD, value=order, allowed="an order ending in 'pp'")

        self.rank_to_gpu = _readonly(self._check_rank_to_gpu(rank_to_gpu))
        self.stage_of_rank = _readonly(self.coords(np.arange(self.world_size))["pp"])

    # ----------------------------------------------------------------------------------------------
    @property
    def order(self) -> str:
        """The full digit order, innermost first (names left out of the input appended)."""
        return "-".join(self._order)

    @property
    def virtual_stage_of_rank(self) -> np.ndarray:
        """(world_size, vpp): the virtual pipeline stages a rank runs, chunk j on PP rank p being
        stage j*pp + p (Megatron's interleaved schedule)."""
        return self.stage_of_rank[:, None] + self.pp * np.arange(self.vpp)[None, :]

    def _check_rank_to_gpu(self, rank_to_gpu: Any) -> np.ndarray:
        if rank_to_gpu is None:
            return np.arange(self.world_size, dtype=np.int64)
        field = "parallelism.rank_to_gpu"
        a = np.asarray(rank_to_gpu)
        if a.ndim != 1 or a.shape[0] != self.world_size:
            raise InputError(f"must list one GPU per rank ({self.world_size} entries)", field=field,
                             value=f"shape {a.shape}", allowed=f"{self.world_size} distinct GPU ids")
        if a.size and (not np.issubdtype(a.dtype, np.integer) or a.min() < 0):
            raise InputError("GPU ids must be non-negative integers", field=field,
                             value=f"dtype {a.dtype}", allowed="ints >= 0")
        if np.unique(a).size != a.size:
            raise InputError("two ranks are mapped to the same GPU", field=field,
                             value="duplicated ids", allowed="distinct GPU ids")
        return a.astype(np.int64)

    def _sizes(self, view: str) -> dict[str, int]:
        return self._dense_sizes if view == "dense" else self._expert_sizes

    def _groups_in(self, view: str, varying: tuple[str, ...]) -> np.ndarray:
        return _group_matrix(self._order, self._sizes(view), varying)

    def groups(self, dim: str) -> np.ndarray:
        """(n_groups x group_size) global ranks of every ``dim`` group, Megatron's order.

        dim: tp, cp, dp, pp, dp_cp (dense-gradient reduction), ep, expert_tp, edp (expert-gradient
        reduction), expert_tp_ep.
        """
        if dim not in _GROUP_DIGITS:
            raise InputError("unknown parallel group", field="groups(dim)", value=dim,
                             allowed=", ".join(GROUP_DIMS))
        if dim not in self._groups:
            view, varying = _GROUP_DIGITS[dim]
            self._groups[dim] = _readonly(self._groups_in(view, varying))
        return self._groups[dim]

    def gpu_groups(self, dim: str) -> np.ndarray:
        """Like ``groups`` but GPU ids (through ``rank_to_gpu``)."""
        return self.rank_to_gpu[self.groups(dim)]

    def _check_rank(self, rank: Any) -> np.ndarray:
        r = np.asarray(rank)
        if not np.issubdtype(r.dtype, np.integer) or (r.size and (r.min() < 0 or r.max() >= self.world_size)):
            raise InputError("rank out of range", field="rank", value=rank, has_value=True,
                             allowed=f"integers 0..{self.world_size - 1}")
        return r.astype(np.int64)

    def coords(self, rank: Any) -> dict[str, Any]:
        """Coordinates of ``rank`` (int or int array): tp, cp, dp, pp (dense view) and expert_tp,
        ep, edp (expert view; pp is shared). Ints in, ints out; arrays in, arrays out."""
        r = self._check_rank(rank)
        dense = _digits(r, self._order, self._dense_sizes)
        expert = _digits(r, self._order, self._expert_sizes)
        out = {"tp": dense["tp"], "cp": dense["cp"], "dp": dense["dp"], "pp": dense["pp"],
               "expert_tp": expert["tp"], "ep": expert["ep"], "edp": expert["dp"]}
        if r.ndim == 0:
            return {k: int(v) for k, v in out.items()}
        return out

    def rank_of(self, **coords: Any) -> Any:
        """Global rank from dense coordinates (tp, cp, dp, pp) or expert ones (expert_tp, ep, edp,
        pp); coordinates of size-1 dimensions may be left out. Broadcasts arrays."""
        expert_view = any(k in coords for k in ("expert_tp", "ep", "edp"))
        names = _EXPERT_COORDS if expert_view else _DENSE_COORDS
        extra = sorted(set(coords) - set(names))
        if extra:
            raise InputError(f"{extra[0]!r} cannot be combined with {', '.join(names)}",
                             field="rank_of", value=sorted(coords),
                             allowed=f"{', '.join(_DENSE_COORDS)} or {', '.join(_EXPERT_COORDS)}")
        view = "expert" if expert_view else "dense"
        sizes = self._sizes(view)
        digit_of = _EXPERT_DIGIT if expert_view else {n: n for n in _DENSE_COORDS}
        digit_value: dict[str, Any] = {}
        for name in names:
            size = sizes[digit_of[name]]
            if name not in coords:
                if size > 1:
                    raise InputError(f"coordinate {name!r} is needed (its size is {size})",
                                     field="rank_of", value=sorted(coords), allowed=", ".join(names))
                continue
            v = np.asarray(coords[name])
            if not np.issubdtype(v.dtype, np.integer) or (v.size and (v.min() < 0 or v.max() >= size)):
                raise InputError("coordinate out of range", field=f"rank_of({name})",
                                 value=coords[name], has_value=True, allowed=f"integers 0..{size - 1}")
            digit_value[digit_of[name]] = v.astype(np.int64)
        rank: Any = np.int64(0)
        stride = 1
        for n in self._order:
            if n in digit_value:
                rank = rank + digit_value[n] * stride
            stride *= sizes[n]
        rank = np.asarray(rank)
        return int(rank) if rank.ndim == 0 else rank

    def __repr__(self) -> str:
        return (f"ParallelLayout(tp={self.tp}, pp={self.pp}, cp={self.cp}, dp={self.dp}, ep={self.ep}, "
                f"expert_tp={self.expert_tp}, edp={self.edp}, vpp={self.vpp}, order={self.order!r})")
