"""The engine's network backends behind one waist: ``transfer(collective) -> simpy.Event``.

- :class:`CoflowNetwork` (the engine's default ``flow`` fidelity). Each collective stage is one
  *coflow*: a single max-min variable whose flows progress in proportion to their sizes. Link l
  carries ``rate x bytes_l / bytes``; alone the stage takes the bottleneck time
  ``max_l bytes_l / capacity_l``; concurrent coflows share links max-min fairly (progressive
  filling). Capacities (line rate x NCCL efficiency of the link class), transport-engine
  efficiencies and the latency rule are SimNetwork's (simmoe.network.simnet).
- :class:`ReplicaSimNetwork`: SimNetwork itself (per-flow max-min, exact, far slower for
  all-to-alls of thousands of uneven flows) with replica multiplicities.
- :class:`AnalyticalSimNetwork`: each collective alone with NCCL's busbw formulas
  (simmoe.network.analytical); no contention.

Replica multiplicities (reduced runs, docs/engine.md): a collective may stand for k symmetric
copies of itself on a link; its route fraction there is scaled by k, so under max-min it takes
exactly the share k copies of equal rate would take. ``replica_engine(base, name, multiplicity)``
registers such a vector and returns the name to put in ``collective.meta["engine"]``.

What keeps the coflow network fast (all exact up to floating-point rounding):

- Static collectives are routed once: their per-stage link rows are cached (:class:`CoflowFabric`,
  which outlives one step) under ``meta["cache_key"]``. MoE all-to-alls come with their rows
  already built (``meta["coflow_rows"]``, from :class:`MoeLinkLoads`, many micro-batches at once).
- Only links that can bind are looked at. A coflow's max-min rate never exceeds its rate alone
  ``r_c = min_l capacity_l / a_cl``, so a link whose *potential* load ``sum_c a_cl r_c`` stays
  below its capacity can never saturate and never affects any rate. Only *hot* links (potential
  >= capacity) enter the solve; each coflow's own bottleneck is always hot.
- Only the affected component is re-solved. Coflows that share a hot link form a component;
  components are independent max-min problems. Starting or ending a coflow changes the potential
  only on its own links, so only its component (merged or split) is re-solved. A coflow alone on
  its hot links runs at ``r_c`` without any solve.
- Progress is accounted lazily (remaining bytes at the time its rate last changed), one timer
  event per change of the earliest completion, no SimPy process per transfer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import simpy

from simmoe.network.backends import AnalyticalBackend
from simmoe.network.flows import Collective
from simmoe.network.params import DEFAULT_NETWORK_PARAMS, NetworkParams
from simmoe.network.simnet import SimNetwork, effective_capacity_bytes_per_s, link_efficiency

# A link is hot when its potential load reaches capacity within this relative margin: keeping a
# link that cannot bind is harmless, dropping one that can is not, so the margin errs wide.
HOT_RTOL = 1e-9
# Progressive filling: links whose saturation level lies within this relative distance of the
# lowest one saturate in the same round (the engine's historical tie rule).
TIE_RTOL = 1e-12
# A coflow is finished when its remaining bytes are within this fraction of its size (rounding).
DONE_RTOL = 1e-9


@dataclass(frozen=True)
class CoflowRow:
    """One coflow's links: ``vals[i]`` bytes cross link ``cols[i]`` per byte of the coflow (route
    fraction x replica multiplicity x engine factor); ``rate_alone_bytes_per_s`` its rate alone."""

    cols: np.ndarray  # int64 link ids, vals > 0 only
    vals: np.ndarray
    rate_alone_bytes_per_s: float
    # vals x rate alone: what the coflow adds to each link's potential load while in flight
    potential: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "potential", self.vals * self.rate_alone_bytes_per_s)

    @classmethod
    def with_potential(cls, cols: np.ndarray, vals: np.ndarray, rate_alone_bytes_per_s: float,
                       potential: np.ndarray) -> "CoflowRow":
        """A row whose ``potential`` (= vals x rate alone, element by element) is already
        computed (a batch of rows in one product)."""
        row = object.__new__(cls)
        object.__setattr__(row, "cols", cols)
        object.__setattr__(row, "vals", vals)
        object.__setattr__(row, "rate_alone_bytes_per_s", rate_alone_bytes_per_s)
        object.__setattr__(row, "potential", potential)
        return row


class StagePlan(NamedTuple):  # a tuple: one is made per collective started (~30,000 a step)
    row: CoflowRow | None  # None: nothing crosses a link
    total_bytes: float
    latency_s: float  # paid after the stage's bytes drained


def make_row(cols: np.ndarray, vals: np.ndarray, capacity_bytes_per_s: np.ndarray) -> CoflowRow | None:
    keep = vals > 0
    if not keep.all():
        cols, vals = cols[keep], vals[keep]
    if len(cols) == 0:
        return None
    return CoflowRow(cols, vals, float(1.0 / np.max(vals / capacity_bytes_per_s[cols])))


class CoflowFabric:
    """What the coflow network keeps across steps: capacities, engine / replica scales, routed
    static collectives and the MoE link-load tables of each EP group."""

    def __init__(self, topology, params: NetworkParams = DEFAULT_NETWORK_PARAMS) -> None:
        self.topology = topology
        self.params = params
        self.capacity_bytes_per_s = effective_capacity_bytes_per_s(topology, params)
        self.hot_threshold = self.capacity_bytes_per_s * (1.0 - HOT_RTOL)
        self._latency_s = np.asarray(topology.link_latency_s, dtype=np.float64)
        self._scales: dict[str, np.ndarray | None] = {}
        self._plans: dict = {}
        self._moe: dict = {}

    # ------------------------------------------------------------------ engine scales
    def replica_engine(self, base_engine: str | None, name: str, multiplicity: np.ndarray | None
                       ) -> str | None:
        if multiplicity is None:
            return base_engine
        key = f"{base_engine or 'nccl'}|{name}"
        if key not in self._scales:
            base = self.engine_scale(base_engine)
            m = np.asarray(multiplicity, dtype=np.float64)
            self._scales[key] = m if base is None else m * base
        return key

    def engine_scale(self, engine: str | None) -> np.ndarray | None:
        """Per-link factor on route fractions (replica multiplicity x NCCL/engine efficiency)."""
        if engine is None:
            return None
        if engine not in self._scales:
            ratio = link_efficiency(self.topology, self.params) / link_efficiency(
                self.topology, self.params, engine)
            self._scales[engine] = None if np.all(ratio == 1.0) else ratio
        return self._scales[engine]

    # ------------------------------------------------------------------ plans
    def plan(self, collective: Collective) -> list[StagePlan]:
        """Per stage: its coflow row, bytes and latency (cached for collectives with a cache key)."""
        rows = collective.meta.get("coflow_rows")
        if rows is not None:  # prebuilt (scaled) rows: [(row, total_bytes, route_latency_s)]
            step_s = self.params.step_latency_s
            if len(rows) == 1 and collective.stages:  # an all-to-all (~30,000 a step: kept short)
                row, total, lat = rows[0]
                return [StagePlan(row, total, collective.stages[0].latency_steps * (step_s + lat))]
            return [StagePlan(row, total, st.latency_steps * (step_s + lat))
                    for (row, total, lat), st in zip(rows, collective.stages)]
        engine = collective.meta.get("engine")
        key = collective.meta.get("cache_key")
        if key is not None:
            hit = self._plans.get((key, engine))
            if hit is not None:
                return hit
        scale = self.engine_scale(engine)
        out = []
        for stage in collective.stages:
            flows = stage.flows.without_empty()
            row, total, route_latency_s = None, 0.0, 0.0
            if len(flows):
                routes = sp.csr_matrix(self.topology.route_matrix(flows.src, flows.dst))
                route_latency_s = float(np.max(routes @ self._latency_s))
                total = float(flows.size_bytes.sum())
                load = np.asarray(routes.T @ flows.size_bytes).reshape(-1) / total
                if scale is not None:
                    load = load * scale
                cols = np.flatnonzero(load > 0)
                row = make_row(cols, load[cols], self.capacity_bytes_per_s)
            out.append(StagePlan(row, total, stage.latency_steps * (self.params.step_latency_s
                                                                     + route_latency_s)))
        if key is not None:
            self._plans[(key, engine)] = out
        return out

    def moe_link_loads(self, key, gpus: np.ndarray, server_of_gpu: np.ndarray,
                       hierarchical: bool) -> "MoeLinkLoads":
        """The link-load table of one EP group (built once)."""
        lk = self._moe.get(key)
        if lk is None:
            lk = self._moe[key] = MoeLinkLoads(self.topology, gpus, server_of_gpu, hierarchical)
        return lk

    def moe_rows(self, loads: "MoeLinkLoads", x: np.ndarray, combine: bool, engine: str | None
                 ) -> list[tuple[CoflowRow | None, float, float]]:
        """Per micro-batch (columns of ``x = loads.inputs(tokens_src_dst, tokens_src_node)``):
        (row, total tokens, route latency) of a dispatch (or combine). Rows are per byte, so one
        serves every bytes-per-token."""
        cols, frac, latency, total = loads.loads_batch(None, None, combine, x)
        scale = self.engine_scale(engine)
        if scale is not None:
            frac *= scale[cols][None, :]
        cap = self.capacity_bytes_per_s[cols]
        alone = 1.0 / np.max(frac / cap[None, :], axis=1)
        # Every row's potential in one product (the same element-wise products CoflowRow makes).
        with np.errstate(invalid="ignore"):  # 0 x inf: a row with no link, never made
            potential = frac * alone[:, None]
        positive = frac > 0
        full = positive.all(axis=1)
        make = CoflowRow.with_potential
        out = []
        for f, p, pos, is_full, a, tot, lat in zip(frac, potential, positive, full.tolist(),
                                                    alone.tolist(), total.tolist(),
                                                    latency.tolist()):
            if is_full:
                row = make(cols, f, a, p)
            elif pos.any():
                row = make(cols[pos], f[pos], a, p[pos])
            else:
                row = None
            out.append((row, tot, lat))
        return out


_TRANSPOSE_ROWS = 8  # micro-batches per block of MoeLinkLoads.inputs' transposed copy
_MAX_LATENCY_GROUPS = 16  # distinct route latencies up to which loads_batch groups inputs


def _latency_groups(lat: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(distinct positive latencies, (groups x inputs) 0/1 membership) of a link-load table's
    per-input latencies; None when there are too many distinct values to be worth it."""
    values = np.unique(lat[lat > 0])
    if len(values) > _MAX_LATENCY_GROUPS:
        return None
    return values, (lat[None, :] == values[:, None]).astype(np.float64)


def _local_ranks(node: np.ndarray) -> np.ndarray:
    local = np.zeros(len(node), dtype=np.int64)
    for b in np.unique(node):  # per node: a handful
        members = np.flatnonzero(node == b)
        local[members] = np.arange(len(members))
    return local


class MoeLinkLoads:
    """Link loads of an EP group's dispatch / combine from token counts, without building flows.

    Flat (NCCL all-to-all-v): source s sends its tokens for rank d straight to d. Hierarchical
    (DeepEP): the tokens s has for node b cross the fabric once, to the GPU with s's local rank in
    b, and are forwarded over NVLink to each destination rank there (both legs one pipelined
    stage, as simmoe.engine.moe_comm.moe_alltoall builds them). Combine reverses every flow.

    Both are linear in the token counts: loads = K @ [tokens_src_dst, tokens_src_node] with K a
    sparse (links x inputs) matrix built once per group and direction, so a whole layer's
    micro-batches are one sparse x dense product.
    """

    def __init__(self, topology, gpus: np.ndarray, server_of_gpu: np.ndarray, hierarchical: bool) -> None:
        g = np.asarray(gpus, dtype=np.int64)
        n = len(g)
        _, node = np.unique(np.asarray(server_of_gpu)[g], return_inverse=True)
        node = node.reshape(-1)
        self.n, self.n_nodes = n, int(node.max()) + 1
        self.num_links = int(topology.num_links)
        self.hier = bool(hierarchical and self.n_nodes > 1)
        lat = np.asarray(topology.link_latency_s, dtype=np.float64)
        src, dst = np.repeat(np.arange(n), n), np.tile(np.arange(n), n)
        R_pair = sp.csr_matrix(topology.route_matrix(g[src], g[dst]))  # rows s * n + d
        lat_pair = np.asarray(R_pair @ lat).reshape(-1)
        s_in, d_in = src, dst  # input entry (s, d) of tokens_src_dst
        self._tables = {}
        if self.hier:
            local = _local_ranks(node)
            by_node = np.full((self.n_nodes, n), -1, dtype=np.int64)
            by_node[node, local] = np.arange(n)
            relay_of = by_node[node[None, :], local[:, None]]  # [s, d]: relay in d's node for s
            relay_of = np.where(relay_of < 0, np.arange(n)[None, :], relay_of)
            relay = relay_of[s_in, d_in]
            fwd_ok = relay != d_in  # relay == d: the RDMA leg delivered it already
            s_b = np.repeat(np.arange(n), self.n_nodes)
            b_b = np.tile(np.arange(self.n_nodes), n)
            rly = by_node[b_b, local[s_b]]
            rdma_ok = (rly >= 0) & (node[s_b] != b_b)
            rly = np.where(rly >= 0, rly, s_b)
            R_rdma = sp.csr_matrix(topology.route_matrix(g[s_b], g[rly]))
            R_rdma_rev = sp.csr_matrix(topology.route_matrix(g[rly], g[s_b]))
            for combine in (False, True):
                pair_rows = (d_in * n + relay) if combine else (relay * n + d_in)
                rdma = R_rdma_rev if combine else R_rdma
                lat_rdma = np.asarray(rdma @ lat).reshape(-1)
                parts = [(R_pair, pair_rows, fwd_ok, lat_pair[pair_rows]),
                         (rdma, np.arange(n * self.n_nodes), rdma_ok, lat_rdma)]
                self._tables[combine] = self._table(parts, topology.num_links)
        else:
            ok = s_in != d_in
            for combine in (False, True):
                pair_rows = (d_in * n + s_in) if combine else (s_in * n + d_in)
                parts = [(R_pair, pair_rows, ok, lat_pair[pair_rows])]
                self._tables[combine] = self._table(parts, topology.num_links)

    @staticmethod
    def _table(parts, n_links: int):
        """(used link ids, K (used links x inputs) CSR, per-input latency, per-input weight)."""
        blocks, lats, weights = [], [], []
        for R, rows, ok, lat in parts:
            sel = R[rows]  # one route row per input entry
            sel = sp.diags(ok.astype(np.float64)) @ sel
            blocks.append(sel)
            lats.append(np.where(ok, lat, 0.0))
            weights.append(ok.astype(np.float64))
        K = sp.vstack(blocks).T.tocsr()  # (links x inputs)
        used = np.flatnonzero(np.diff(K.indptr) > 0)
        K = K[used]
        K.sort_indices()
        lat = np.concatenate(lats)
        return used, K, lat, np.concatenate(weights), _latency_groups(lat)

    def inputs(self, tokens_src_dst: np.ndarray, tokens_src_node: np.ndarray | None,
               rows: np.ndarray | None = None) -> np.ndarray:
        """(inputs, batch) float token counts, one column per micro-batch: what
        :meth:`loads_batch` multiplies (build it once for both directions). Laid out so that the
        sparse product reads it as it is (a (batch, inputs) array would be transposed into a
        copy on every product). ``rows``: the micro-batches (leading-axis entries) to take,
        in that order (default all): ``inputs(t[rows], n[rows])`` without the copies."""
        t = np.asarray(tokens_src_dst)
        if t.ndim == 2:
            t = t[None]
        n_pairs = t[0].size
        parts = [t.reshape(t.shape[0], -1)]
        if self.hier:
            parts.append(np.asarray(tokens_src_node).reshape(t.shape[0], -1))
        if rows is None:
            rows = np.arange(t.shape[0])
        b = len(rows)
        x = np.empty((n_pairs + (parts[1].shape[1] if self.hier else 0), b))
        # Transposed a few micro-batches at a time: the strided writes of one whole transposed
        # copy miss the cache (3x slower at DeepSeek size). Same values.
        for lo in range(0, b, _TRANSPOSE_ROWS):
            hi = min(b, lo + _TRANSPOSE_ROWS)
            take = rows[lo:hi]
            x[:n_pairs, lo:hi] = parts[0][take].T
            if self.hier:
                x[n_pairs:, lo:hi] = parts[1][take].T
        return x

    def loads_batch(self, tokens_src_dst: np.ndarray, tokens_src_node: np.ndarray | None,
                    combine: bool, x: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For a batch of micro-batches (leading axis): (link ids, bytes on each link per byte of
        the coflow (batch x links), longest route latency (batch,), total tokens moved (batch,)).
        ``x``: :meth:`inputs` of the same tokens, when already built."""
        if x is None:
            x = self.inputs(tokens_src_dst, tokens_src_node)
        used, K, lat, weight, groups = self._tables[combine]
        load = np.asarray(K @ x).T  # (batch, used links), in tokens
        total = weight @ x  # whole token counts: exact in any summation order
        if groups is None or not x.min(initial=0.0) >= 0:  # (the grouping needs counts >= 0)
            latency = np.max(np.where(x > 0, lat[:, None], 0.0), axis=0)
        else:
            # The largest latency among the inputs that carry tokens: a group of inputs of one
            # latency carries some iff its token sum is > 0 (sums of counts >= 0: exact).
            values, member = groups
            carries = (member @ x) > 0  # (groups, batch)
            latency = np.max(np.where(carries, values[:, None], 0.0), axis=0, initial=0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            load /= np.where(total > 0, total, np.inf)[:, None]
        return used, load, latency, total

    def loads(self, tokens_src_dst: np.ndarray, tokens_src_node: np.ndarray | None,
              bytes_per_token: float, combine: bool) -> tuple[np.ndarray, float, float]:
        """(bytes per link (all links), longest route latency, total bytes) of one dispatch."""
        used, frac, latency, total = self.loads_batch(tokens_src_dst, tokens_src_node, combine)
        out = np.zeros(self.num_links)
        out[used] = frac[0] * total[0] * bytes_per_token
        return out, float(latency[0]), float(total[0] * bytes_per_token)


class CoflowNetwork:
    """All in-flight collective stages as coflows, max-min fair on the links (module doc).

    Per-link state (potential load, which coflows cross a link) lives in numpy arrays over all
    links; per-coflow state (remaining bytes, rate, finish time, ...) in plain lists indexed by
    slot: a handful of coflows are in flight at a time, and scalar Python on them is cheaper than
    numpy calls on short arrays (the arithmetic is the same, element by element)."""

    def __init__(self, env: simpy.Environment, topology=None,
                 params: NetworkParams = DEFAULT_NETWORK_PARAMS, *,
                 fabric: CoflowFabric | None = None) -> None:
        if fabric is None:
            fabric = CoflowFabric(topology, params)
        self.env = env
        self.fabric = fabric
        self.topology = fabric.topology
        self.params = fabric.params
        self.capacity_bytes_per_s = fabric.capacity_bytes_per_s
        self._thr = fabric.hot_threshold
        n_links = len(self.capacity_bytes_per_s)
        self._pot = np.zeros(n_links)  # potential load: sum over coflows of a_cl * rate alone
        self._mark = np.zeros(n_links, bool)  # scratch of _component (all False between calls)
        self._dense = np.zeros(n_links)  # scratch of _matrix (all 0 between calls)
        # _bits[w, l] bit b: coflow 64 w + b crosses link l (a link's coflows in a few words)
        self._bits = np.zeros((0, n_links), np.uint64)
        self._rows: list[CoflowRow | None] = []
        self._cbs: list = []
        self._rem: list[float] = []  # bytes left at time _tref
        self._tref: list[float] = []
        self._rate: list[float] = []
        self._fin: list[float] = []  # projected finish time at the current rate
        self._size: list[float] = []
        self._order: list[int] = []  # start sequence number (finish callbacks run in this order)
        self._label: list[int] = []  # component id, -1 when alone
        self._live: set[int] = set()  # active slots
        self._free: list[int] = []  # free slots, the next one last
        self._seq = 0
        self._comp: dict[int, set] = {}  # component id -> slots
        self._comp_id = 0
        self._timer_at = np.inf
        self._timer_exact = True  # _timer_at is the earliest finish of the live coflows
        self._newest = -1  # slot of the last lone start
        self._timer_gen = 0
        self.n_solves = 0
        # An environment that can process an event at once when nothing could come before it
        # (simmoe.engine.core.EngineEnvironment.succeed_last) gets to; a plain one schedules it.
        self._succeed_last = getattr(env, "succeed_last", None) or _succeed

    @property
    def now(self) -> float:
        return self.env.now

    # ------------------------------------------------------------------ waist
    def replica_engine(self, base_engine, name, multiplicity):
        return self.fabric.replica_engine(base_engine, name, multiplicity)

    def transfer(self, collective: Collective) -> simpy.Event:
        done = self.env.event()
        self._stage(self.fabric.plan(collective), 0, self.env.now, done)
        return done

    def _stage(self, plans: list[StagePlan], i: int, start: float, done: simpy.Event,
               last: bool = False) -> None:
        """Run stage i of a transfer (``last``: the caller does nothing after this call, so the
        transfer's completion may be processed at once: EngineEnvironment.succeed_last)."""
        if i == len(plans):
            if last:
                self._succeed_last(done, self.env.now - start)
            else:
                done.succeed(self.env.now - start)
            return
        p = plans[i]

        def drained(last: bool = False):
            if p.latency_s > 0:
                self.env.timeout(p.latency_s).callbacks.append(
                    lambda _e: self._stage(plans, i + 1, start, done, True))
            else:
                self._stage(plans, i + 1, start, done, last)

        if p.row is None or p.total_bytes <= 0:
            drained(last)
        elif self._add(p.row, p.total_bytes, drained) and self._timer_exact:
            self._schedule_new()
        else:
            self._schedule()

    # ------------------------------------------------------------------ state
    def _grow(self) -> None:
        """Double the slots (16 at first); new slots are handed out lowest first."""
        old = len(self._rows)
        n = max(16, 2 * old)
        words = -(-n // 64)
        if words > self._bits.shape[0]:
            bits = np.zeros((words, self._bits.shape[1]), np.uint64)
            bits[:self._bits.shape[0]] = self._bits
            self._bits = bits
        add = n - old
        self._rows += [None] * add
        self._cbs += [None] * add
        for name, fill in (("_rem", 0.0), ("_tref", 0.0), ("_rate", 0.0), ("_fin", np.inf),
                           ("_size", 0.0), ("_order", 0), ("_label", -1)):
            getattr(self, name).extend([fill] * add)
        self._free = list(range(n - 1, old - 1, -1)) + self._free

    def _crossing(self, links: np.ndarray) -> list[int]:
        """The slots crossing any of ``links``, as bit words (bit b of word w: slot 64 w + b)."""
        return np.bitwise_or.reduce(self._bits[:, links], axis=1).tolist()

    def _add(self, row: CoflowRow, total_bytes: float, callback) -> bool:
        """Start a coflow; True when it runs alone at its rate alone (no other rate changed)."""
        if not self._free:
            self._grow()
        j = self._free.pop()
        now = self.env.now
        cols = row.cols
        self._rows[j], self._cbs[j] = row, callback
        own = 1 << (j & 63)
        word = self._bits[j >> 6]
        word[cols] |= _BIT[j & 63]
        pot = self._pot[cols]
        pot += row.potential
        self._pot[cols] = pot
        self._live.add(j)
        self._order[j] = self._seq
        self._seq += 1
        self._rem[j], self._size[j], self._tref[j] = total_bytes, total_bytes, now
        hot = cols[pot >= self._thr[cols]]
        crossing = self._crossing(hot)
        if crossing[j >> 6] == own and sum(crossing) == own:
            # Alone on every link that can bind (and there is one): its rate alone, nobody else
            # affected.
            r = row.rate_alone_bytes_per_s
            self._rate[j], self._fin[j], self._label[j] = r, now + total_bytes / r, -1
            self._newest = j
            return True
        self._rate[j], self._fin[j] = 0.0, np.inf
        members, links = self._component(j, None, (hot, crossing))
        for m in members:  # the components it joins dissolve into this one
            lab = self._label[m]
            if lab >= 0:
                self._comp.pop(lab, None)
        self._solve_component(j, members, links)
        return False

    def _remove(self, slots: list[int]) -> list[int]:
        """Drop finished coflows; returns the other members of their components (to re-solve)."""
        affected: set = set()
        for j in slots:
            row = self._rows[j]
            word = self._bits[j >> 6]
            word[row.cols] &= _NOT_BIT[j & 63]
            self._pot[row.cols] -= row.potential
            lab = self._label[j]
            if lab >= 0:
                members = self._comp.pop(lab, None)
                if members:
                    affected |= members
            self._live.discard(j)
            self._rows[j] = None
            self._cbs[j] = None
            self._fin[j] = np.inf
            self._rate[j] = 0.0
            self._label[j] = -1
            self._free.append(j)
        affected -= set(slots)
        return sorted(affected)

    def _component(self, seed: int, allowed: set | None, first: tuple | None = None
                   ) -> tuple[list[int], np.ndarray]:
        """Slots connected to ``seed`` through shared hot links, and those links (sorted; not
        computed for a lone seed, which needs none). ``first``: the seed's hot links and
        :meth:`_crossing` of them, when the caller has them already.

        Breadth-first, one level at a time (the members' order, which the solve's sums follow, is
        the seed, then each level's new slots in slot order); links already reached are marked in
        a reused per-link buffer instead of set operations on arrays."""
        members = [seed]
        seen = {seed}
        mark = self._mark
        pot, thr, rows = self._pot, self._thr, self._rows
        links: list[np.ndarray] = []
        frontier = [seed]
        while frontier:
            if first is not None:  # the seed's level: no link is marked yet
                hot, words = first
                first = None
            else:
                if len(frontier) == 1:
                    cols = rows[frontier[0]].cols
                else:
                    cols = np.concatenate([rows[j].cols for j in frontier])
                hot = cols[(pot[cols] >= thr[cols]) & ~mark[cols]]  # new hot links (may repeat)
                words = None
            frontier = []
            if not len(hot):
                break
            mark[hot] = True
            links.append(hot)
            if words is None:
                words = self._crossing(hot)
            for w, word in enumerate(words):  # the coflows crossing them, in slot order
                while word:
                    low = word & -word
                    word ^= low
                    j = 64 * w + low.bit_length() - 1
                    if j not in seen and (allowed is None or j in allowed):
                        seen.add(j)
                        members.append(j)
                        frontier.append(j)
        if not links:
            return members, np.zeros(0, np.int64)
        allh = np.concatenate(links) if len(links) > 1 else links[0]
        if len(members) == 1:  # alone: callers need no links (it runs at its rate alone)
            mark[allh] = False
            return members, allh
        out = np.flatnonzero(mark)  # sorted, distinct
        mark[allh] = False
        return members, out

    def _matrix(self, members: list[int], links: np.ndarray) -> np.ndarray:
        """(members x links) bytes on each link per byte of each member coflow."""
        out = np.empty((len(members), len(links)))
        dense = self._dense
        for i, j in enumerate(members):
            row = self._rows[j]
            dense[row.cols] = row.vals
            out[i] = dense[links]
            dense[row.cols] = 0.0
        return out

    def _solve_component(self, s: int, members, links) -> None:
        """Give the coflows of one connected component their max-min rates (a coflow alone on
        its links just runs at its stand-alone rate: no solve)."""
        if len(members) == 1:
            self._label[s] = -1
            self._set_rate(s, self._rows[s].rate_alone_bytes_per_s)
            return
        rates = _progressive_filling(self._matrix(members, links), self.capacity_bytes_per_s[links])
        self.n_solves += 1
        self._comp_id += 1
        self._comp[self._comp_id] = set(members)
        for j, rate in zip(members, rates.tolist()):
            self._label[j] = self._comp_id
            self._set_rate(j, rate)

    def _set_rate(self, j: int, rate: float) -> None:
        """Account slot j's progress at its old rate up to now, then give it ``rate``."""
        now = self.env.now
        rem = self._rem[j] - self._rate[j] * (now - self._tref[j])
        self._rem[j] = rem
        self._tref[j] = now
        self._rate[j] = rate
        self._fin[j] = now + max(rem, 0.0) / rate if rate > 0 else np.inf

    # ------------------------------------------------------------------ clock
    def _schedule(self) -> None:
        t = min(map(self._fin.__getitem__, self._live)) if self._live else np.inf
        self._timer_exact = True  # _timer_at is the earliest finish (inf: none) from here on
        if t == self._timer_at or not math.isfinite(t):
            if not math.isfinite(t):
                self._timer_at = np.inf
            return
        self._set_timer(t)

    def _schedule_new(self) -> None:
        """:meth:`_schedule` after a lone start while ``_timer_at`` is exact: the earliest finish
        is the earlier of it and the new coflow's (the same min, without the scan)."""
        t = self._fin[self._newest]
        if t < self._timer_at:
            self._set_timer(t)

    def _set_timer(self, t: float) -> None:
        self._timer_at = t
        self._timer_gen += 1
        gen = self._timer_gen
        self.env.timeout(max(t - self.env.now, 0.0)).callbacks.append(lambda _e: self._tick(gen))

    def _tick(self, gen: int) -> None:
        if gen != self._timer_gen:
            return  # superseded by a later schedule
        self._timer_at = np.inf
        self._timer_exact = False  # finishes change below; the next _schedule rescans
        now = self.env.now
        rem, rate, tref, size, fin = self._rem, self._rate, self._tref, self._size, self._fin
        finished = [j for j in self._live
                    if rem[j] - rate[j] * (now - tref[j]) <= DONE_RTOL * size[j]
                    or math.isinf(rate[j]) or fin[j] <= now]
        if finished:
            finished.sort(key=self._order.__getitem__)
            cbs = [self._cbs[j] for j in finished]
            affected = self._remove(finished)
            if affected:
                self._resolve_split(affected)
            for cb in cbs:
                cb()
        self._schedule()

    def _resolve_split(self, affected: list[int]) -> None:
        """Components that lost members may split: re-solve each piece of what is left."""
        allowed = set(affected)
        for s in affected:
            if s not in allowed:
                continue
            if len(allowed) == 1:  # the last one left can only be alone: no search
                self._solve_component(s, [s], None)
                break
            members, links = self._component(s, allowed)
            allowed.difference_update(members)
            self._solve_component(s, members, links)


# Bit b of a slot word, and its complement (made once: a numpy scalar per start is not free).
_BIT = [np.uint64(1 << b) for b in range(64)]
_NOT_BIT = [np.uint64(~(1 << b) & 0xFFFFFFFFFFFFFFFF) for b in range(64)]


def _succeed(event: simpy.Event, value=None) -> None:
    event.succeed(value)


def _progressive_filling(A: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Max-min fair rates of the rows of A (row i puts A[i, l] on link l per unit of its rate)
    under capacities ``cap``; every row crosses at least one link."""
    n = A.shape[0]
    rate = np.zeros(n)
    free = np.ones(n, bool)
    load = np.zeros(A.shape[1])
    used = A > 0
    level = np.empty(A.shape[1])
    demand = A.sum(axis=0)  # everyone is free in the first round
    while True:
        level.fill(np.inf)
        np.divide(cap - load, demand, out=level, where=demand > 0)
        lvl = float(level.min())
        if not np.isfinite(lvl):
            rate[free] = np.inf
            break
        tight = level <= lvl * (1 + TIE_RTOL)
        frozen = free & used[:, tight].any(axis=1)
        rate[frozen] = max(lvl, 0.0)
        free &= ~frozen
        if not free.any():  # the last round: nobody left to use the load
            break
        load += A[frozen].T @ rate[frozen]
        demand = A[free].sum(axis=0)
    return rate


class ReplicaSimNetwork(SimNetwork):
    """SimNetwork (per-flow max-min) whose collectives may carry per-link replica multiplicities."""

    def __init__(self, env: simpy.Environment, topology, params: NetworkParams = DEFAULT_NETWORK_PARAMS,
                 **kwargs) -> None:
        super().__init__(env, topology, params, **kwargs)
        self._replica_scales: dict[str, np.ndarray] = {}

    def replica_engine(self, base_engine: str | None, name: str, multiplicity: np.ndarray | None
                       ) -> str | None:
        if multiplicity is None:
            return base_engine
        key = f"{base_engine or 'nccl'}|{name}"
        if key not in self._replica_scales:
            scale = np.asarray(multiplicity, dtype=np.float64)
            if base_engine is not None:
                # The transport engine's own per-link-class factor (SimNetwork's rule).
                scale = scale * (link_efficiency(self.topology, self.params)
                                 / link_efficiency(self.topology, self.params, base_engine))
            self._replica_scales[key] = scale
        return key

    def _engine_scale(self, engine):
        if engine is not None and engine in self._replica_scales:
            return self._replica_scales[engine]
        return super()._engine_scale(engine)


class AnalyticalSimNetwork:
    """Analytical backend for the engine: a collective takes its isolated formula time."""

    def __init__(self, env: simpy.Environment, topology, params: NetworkParams = DEFAULT_NETWORK_PARAMS
                 ) -> None:
        self.env = env
        self.backend = AnalyticalBackend(topology, params)
        self._cache: dict = {}

    @property
    def now(self) -> float:
        return self.env.now

    def replica_engine(self, base_engine, name, multiplicity):
        return base_engine  # no fabric contention to scale

    def duration_s(self, collective: Collective) -> float:
        key = collective.meta.get("cache_key")
        if key is not None and key in self._cache:
            return self._cache[key]
        t = self.backend.collective_time_s(collective).time_s
        if key is not None:
            self._cache[key] = t
        return t

    def transfer(self, collective: Collective) -> simpy.Event:
        return self.env.timeout(self.duration_s(collective), value=None)
