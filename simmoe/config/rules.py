"""Cross-field rules of a scenario, as plain sentences.

Each rule returns :class:`Problem` records (field path, bad value, what is wrong, what is allowed);
the loader turns them into :class:`simmoe.errors.ConfigError` naming the file and line the field
came from. These rules need no file and no topology: the loader has already filled in
``parallelism.dp`` and ``cluster.nodes`` from the topology before calling :func:`check_scenario`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simmoe.config.schema import Parallelism, Scenario


@dataclass(frozen=True)
class Problem:
    field: str
    value: Any
    problem: str
    allowed: str | None = None
    has_value: bool = True


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _divisors_text(n: int, limit: int = 24) -> str:
    ds = _divisors(n)
    shown = ", ".join(str(d) for d in ds[:limit])
    return f"divisors of {n}: {shown}" + (", ..." if len(ds) > limit else "")


def split_stage_layers(blocks: int, par: Parallelism) -> tuple[int, ...] | None:
    """Blocks per virtual stage, or None where the split rule cannot be met (see
    :func:`check_pipeline_split` for the rule in words)."""
    stages = par.pp * par.vpp
    first, last = par.first_stage_layers, par.last_stage_layers
    if par.stage_layers is not None:
        given = tuple(par.stage_layers)
        ok = first is None and last is None and len(given) == stages and sum(given) == blocks
        return given if ok else None
    if stages == 1:
        if first is not None or last is not None:
            return None
        return (blocks,)
    fixed = [x for x in (first, last) if x is not None]
    rest = blocks - sum(fixed)
    middle = stages - len(fixed)
    if rest < 0:
        return None
    if middle == 0:
        if rest != 0:
            return None
        return (first, last)  # type: ignore[return-value]
    if rest % middle != 0 or rest // middle == 0:
        return None
    per = rest // middle
    split = [per] * stages
    if first is not None:
        split[0] = first
    if last is not None:
        split[-1] = last
    return tuple(split)


def check_pipeline_split(s: Scenario) -> list[Problem]:
    """Blocks = model.layers + model.mtp_depth (MTP modules sit on the last stage). Over
    pp * vpp virtual stages they split evenly, unless parallelism.first_stage_layers and/or
    last_stage_layers fix the first/last stage, in which case the remaining blocks split evenly
    (at least one each) over the other stages, or parallelism.stage_layers gives every stage's
    count (one per stage, summing to the blocks)."""
    par = s.parallelism
    m = s.model
    blocks = m.layers + m.mtp_depth
    stages = par.virtual_stages
    split = split_stage_layers(blocks, par)
    if split is not None:
        if m.mtp_depth and split[-1] < m.mtp_depth:
            field, value = (("parallelism.stage_layers", par.stage_layers) if par.stage_layers is not None
                            else ("parallelism.last_stage_layers", split[-1]))
            return [Problem(field, value,
                            f"leaves the last virtual stage {split[-1]} blocks, fewer than the "
                            f"model.mtp_depth={m.mtp_depth} MTP modules that sit there",
                            f"at least {m.mtp_depth} blocks on the last stage")]
        return []
    what = f"{blocks} blocks (model.layers={m.layers} + model.mtp_depth={m.mtp_depth})"
    if par.stage_layers is not None:
        given = par.stage_layers
        if par.first_stage_layers is not None or par.last_stage_layers is not None:
            return [Problem("parallelism.stage_layers", given,
                            "is given together with first_stage_layers / last_stage_layers",
                            "one of the two ways to split the pipeline")]
        if len(given) != stages:
            return [Problem("parallelism.stage_layers", given,
                            f"has {len(given)} entries for pp*vpp={par.pp}*{par.vpp}={stages} "
                            "virtual pipeline stages", f"one count of blocks per stage ({stages})")]
        return [Problem("parallelism.stage_layers", given,
                        f"sums to {sum(given)}, not to the {what}",
                        f"counts summing to {blocks}")]
    if stages == 1:
        field = "parallelism.first_stage_layers" if par.first_stage_layers is not None else "parallelism.last_stage_layers"
        value = par.first_stage_layers if par.first_stage_layers is not None else par.last_stage_layers
        return [Problem(field, value, "an uneven pipeline split needs pp * vpp >= 2 virtual stages",
                        "null when pp * vpp = 1")]
    if par.first_stage_layers is None and par.last_stage_layers is None:
        return [Problem(
            "model.layers", m.layers,
            f"{what} do not split evenly over pp*vpp={par.pp}*{par.vpp}={stages} virtual pipeline stages",
            f"a block count divisible by {stages}, another pp/vpp, or an uneven split with "
            "parallelism.first_stage_layers / last_stage_layers")]
    fixed = (par.first_stage_layers or 0) + (par.last_stage_layers or 0)
    middle = stages - (par.first_stage_layers is not None) - (par.last_stage_layers is not None)
    return [Problem(
        "parallelism.first_stage_layers" if par.first_stage_layers is not None else "parallelism.last_stage_layers",
        par.first_stage_layers if par.first_stage_layers is not None else par.last_stage_layers,
        f"after first_stage_layers={par.first_stage_layers} and last_stage_layers={par.last_stage_layers}, "
        f"the remaining {blocks - fixed} of {what} do not split evenly (at least one each) over the other "
        f"{middle} virtual stages",
        f"values leaving a positive multiple of {middle} blocks" if middle else f"values summing to {blocks}")]


def check_model(s: Scenario) -> list[Problem]:
    m = s.model
    out: list[Problem] = []
    att = m.attention
    if m.dense_layers > m.layers:
        out.append(Problem("model.dense_layers", m.dense_layers, f"exceeds model.layers={m.layers}",
                           f"0..{m.layers}"))
    if att.type in ("mha", "gqa") and att.head_dim is None and m.hidden % att.heads:
        out.append(Problem("model.attention.heads", att.heads,
                           f"does not divide model.hidden={m.hidden}, and no head_dim is given",
                           f"a divisor of {m.hidden}, or set model.attention.head_dim"))
    if att.type == "gqa" and att.heads % att.kv_heads:
        out.append(Problem("model.attention.kv_heads", att.kv_heads,
                           f"does not divide model.attention.heads={att.heads}", _divisors_text(att.heads)))
    if m.dense_ffn is None and m.dense_layer_indices():
        out.append(Problem("model.dense_ffn", None,
                           f"is required: {len(m.dense_layer_indices())} of model.layers={m.layers} have a dense FFN",
                           "an integer > 0", has_value=False))
    moe = m.moe
    if moe is None:
        return out
    if moe.top_k > moe.routed_experts:
        out.append(Problem("model.moe.top_k", moe.top_k,
                           f"exceeds model.moe.routed_experts={moe.routed_experts}",
                           f"1..{moe.routed_experts}"))
    if moe.shared_expert_ffn is not None and moe.shared_experts == 0:
        out.append(Problem("model.moe.shared_expert_ffn", moe.shared_expert_ffn,
                           "is set but model.moe.shared_experts=0", "null, or set model.moe.shared_experts"))
    pattern = moe.layer_pattern
    if isinstance(pattern, list):
        bad = [i for i in pattern if i >= m.layers]
        if bad:
            out.append(Problem("model.moe.layer_pattern", pattern,
                               f"layer indices {bad} are beyond model.layers={m.layers}",
                               f"0-based indices 0..{m.layers - 1}"))
        dense = [i for i in pattern if i < m.dense_layers]
        if dense:
            out.append(Problem("model.moe.layer_pattern", pattern,
                               f"layer indices {dense} fall in the leading dense layers "
                               f"(model.dense_layers={m.dense_layers})",
                               f"indices {m.dense_layers}..{m.layers - 1}"))
        if len(set(pattern)) != len(pattern):
            out.append(Problem("model.moe.layer_pattern", pattern, "repeats a layer index",
                               "each index at most once"))
    elif m.dense_layers <= m.layers and not m.moe_layer_indices():
        out.append(Problem("model.dense_layers", m.dense_layers,
                           f"leaves no MoE layer among model.layers={m.layers} with layer_pattern={pattern}",
                           f"0..{m.layers - 1}, or remove model.moe for a dense model"))
    return out


def check_parallelism(s: Scenario) -> list[Problem]:
    p = s.parallelism
    m = s.model
    t = s.training
    out: list[Problem] = []
    att = m.attention
    if att.heads % p.tp:
        out.append(Problem("parallelism.tp", p.tp,
                           f"does not divide model.attention.heads={att.heads} (each TP rank holds whole heads)",
                           _divisors_text(att.heads)))
    if att.type == "gqa" and att.kv_heads % p.tp:
        out.append(Problem("parallelism.tp", p.tp,
                           f"does not divide model.attention.kv_heads={att.kv_heads} (Megatron splits KV groups over TP)",
                           _divisors_text(att.kv_heads)))
    if m.dense_ffn is not None and m.dense_ffn % p.tp:
        out.append(Problem("parallelism.tp", p.tp, f"does not divide model.dense_ffn={m.dense_ffn}",
                           _divisors_text(m.dense_ffn)))
    if p.cp > 1 and t.seq_len % (2 * p.cp):
        out.append(Problem("parallelism.cp", p.cp,
                           f"training.seq_len={t.seq_len} is not divisible by 2*cp={2 * p.cp} "
                           "(causal context parallelism splits each sequence into 2*cp chunks)",
                           "cp with seq_len divisible by 2*cp"))
    if p.sequence_parallel and p.tp > 1 and (t.seq_len // p.cp) % p.tp:
        out.append(Problem("parallelism.sequence_parallel", True,
                           f"the per-CP-rank sequence ({t.seq_len // p.cp} tokens) is not divisible by tp={p.tp}",
                           "false, or tp dividing seq_len / cp"))

    if p.tp_comm_overlap and not (p.tp > 1 and p.sequence_parallel):
        out.append(Problem("parallelism.tp_comm_overlap", True,
                           f"overlaps sequence-parallel TP collectives with GEMMs, but tp={p.tp}, "
                           f"sequence_parallel={str(p.sequence_parallel).lower()}",
                           "false, or tp > 1 with sequence_parallel: true (as Megatron requires)"))

    # Pipeline schedule.
    if p.schedule == "interleaved" and (p.vpp < 2 or p.pp < 2):
        out.append(Problem("parallelism.vpp", p.vpp,
                           f"the interleaved schedule needs vpp >= 2 and pp >= 2 (pp={p.pp})",
                           "vpp >= 2 with pp >= 2, or schedule 1f1b"))
    if p.pipeline_p2p == "blocking" and p.schedule not in ("interleaved", "dualpipe"):
        out.append(Problem("parallelism.pipeline_p2p", p.pipeline_p2p,
                           "blocking pipeline sends are modelled for torch's looped runtime "
                           "(PipelineScheduleMulti: interleaved) and DualPipe's reference",
                           "async, or parallelism.schedule: interleaved or dualpipe"))
    if p.ep_comm_overlap:
        if p.schedule == "dualpipe" or (p.pp > 1 and p.schedule != "interleaved"):
            out.append(Problem("parallelism.ep_comm_overlap", True,
                               f"Megatron pairs the steady-state steps of its interleaved schedule "
                               f"(or of 1F1B without a pipeline), not schedule {p.schedule} with pp={p.pp}",
                               "false, or schedule: interleaved (vpp >= 2), or pp: 1"))
        elif p.pipeline_p2p == "blocking":
            out.append(Problem("parallelism.ep_comm_overlap", True,
                               "is Megatron's, whose pipeline sends are async; blocking sends are "
                               "torch's looped runtime", "false, or pipeline_p2p: async"))
        if m.moe is None or p.ep < 2:
            out.append(Problem("parallelism.ep_comm_overlap", True,
                               "overlaps EP all-to-alls, but there are none (no model.moe, or ep 1)",
                               "false, or a MoE model with ep >= 2"))
    if p.vpp > 1 and p.schedule != "interleaved":
        out.append(Problem("parallelism.schedule", p.schedule,
                           f"virtual stages (vpp={p.vpp}) run only under the interleaved schedule",
                           "interleaved, or vpp: 1"))
    if p.schedule == "dualpipe" and (p.pp < 2 or p.pp % 2):
        out.append(Problem("parallelism.pp", p.pp,
                           "DualPipe feeds micro-batches from both ends of the pipeline and needs an even pp >= 2",
                           "an even pp >= 2"))
    out += check_pipeline_split(s)

    # Data parallelism and batches (dp is filled in by the loader).
    dp = p.dp or 1
    per_step = t.micro_batch * dp
    if t.global_batch % per_step:
        out.append(Problem("training.global_batch", t.global_batch,
                           f"is not divisible by micro_batch*dp = {t.micro_batch}*{dp} = {per_step}",
                           f"a multiple of {per_step}"))
    elif p.schedule_micro_batches is not None and (t.global_batch // per_step) % p.schedule_micro_batches:
        micro = t.global_batch // per_step
        out.append(Problem("parallelism.schedule_micro_batches", p.schedule_micro_batches,
                           f"does not divide the {micro} micro-batches per step "
                           f"(global_batch / (micro_batch * dp))", f"a divisor of {micro}, or null"))
    elif p.schedule == "dualpipe":
        # Half the micro-batches enter from each end, and the steady phase pairs a forward of one
        # direction with a backward of the other (simmoe.engine.schedules.dualpipe).
        micro = t.global_batch // per_step
        run = p.schedule_micro_batches
        if run is not None and run < micro and (run % 2 or run < 2 * p.pp):
            out.append(Problem("parallelism.schedule_micro_batches", run,
                               "is too few micro-batches for one run of DualPipe (an even number, "
                               f"at least 2*pp = {2 * p.pp})",
                               f"an even divisor of {micro} that is at least {2 * p.pp}, or null"))
        elif micro % 2 or micro < 2 * p.pp:
            out.append(Problem("training.global_batch", t.global_batch,
                               f"gives {micro} micro-batches per step; DualPipe needs an even number, "
                               f"at least 2*pp = {2 * p.pp}",
                               f"a multiple of {2 * per_step} that is at least {2 * p.pp * per_step}"))
    ramp = t.batch_ramp
    if ramp is not None:
        if ramp.start_global_batch > t.global_batch:
            out.append(Problem("training.batch_ramp.start_global_batch", ramp.start_global_batch,
                               f"exceeds training.global_batch={t.global_batch}", f"1..{t.global_batch}"))
        if ramp.start_global_batch % per_step:
            out.append(Problem("training.batch_ramp.start_global_batch", ramp.start_global_batch,
                               f"is not divisible by micro_batch*dp = {per_step}", f"a multiple of {per_step}"))
        if ramp.ramp_tokens >= t.total_tokens:
            out.append(Problem("training.batch_ramp.ramp_tokens", ramp.ramp_tokens,
                               f"is not below training.total_tokens={t.total_tokens:g}",
                               f"fewer than {t.total_tokens:g} tokens"))

    # Experts.
    moe = m.moe
    if moe is None:
        if p.ep > 1 or p.expert_tp > 1:
            field, value = ("parallelism.ep", p.ep) if p.ep > 1 else ("parallelism.expert_tp", p.expert_tp)
            out.append(Problem(field, value, "is set but the model is dense (no model.moe)", "1"))
        return out
    if moe.routed_experts % p.ep:
        out.append(Problem("parallelism.ep", p.ep,
                           f"does not divide model.moe.routed_experts={moe.routed_experts}",
                           _divisors_text(moe.routed_experts)))
    if moe.expert_ffn % p.expert_tp:
        out.append(Problem("parallelism.expert_tp", p.expert_tp,
                           f"does not divide model.moe.expert_ffn={moe.expert_ffn}", _divisors_text(moe.expert_ffn)))
    shared_ffn = moe.shared_expert_ffn or moe.expert_ffn
    if moe.shared_experts and (moe.shared_experts * shared_ffn) % p.tp:
        out.append(Problem("parallelism.tp", p.tp,
                           f"does not divide the shared experts' FFN width "
                           f"({moe.shared_experts}*{shared_ffn}; shared experts are split like the dense FFN)",
                           _divisors_text(moe.shared_experts * shared_ffn)))
    ranks = p.tp * p.cp * dp
    if ranks % (p.ep * p.expert_tp):
        out.append(Problem("parallelism.ep", p.ep,
                           f"ep*expert_tp = {p.ep}*{p.expert_tp} = {p.ep * p.expert_tp} does not divide "
                           f"tp*cp*dp = {p.tp}*{p.cp}*{dp} = {ranks}, the ranks an MoE layer re-factors as "
                           "expert_tp * ep * edp",
                           f"ep*expert_tp among the {_divisors_text(ranks)}"))
    return out


def check_routing(s: Scenario) -> list[Problem]:
    r = s.routing
    out: list[Problem] = []
    if r.execution == "padded" and r.capacity_factor is None:
        out.append(Problem("routing.capacity_factor", None,
                           "padded execution sizes compute and all-to-all to the capacity, so it needs a capacity factor",
                           "a number > 0 (e.g. 1.25), or routing.execution: dropless", has_value=False))
    if r.execution == "dropless" and r.capacity_factor is not None:
        out.append(Problem("routing.capacity_factor", r.capacity_factor,
                           "dropless execution has no capacity; a capacity factor would drop tokens",
                           "null with dropless, or routing.execution: padded"))
    if r.policy == "expert_choice" and r.capacity_factor is None:
        out.append(Problem("routing.capacity_factor", None,
                           "expert-choice routing lets each expert pick capacity_factor*tokens*top_k/experts tokens",
                           "a number > 0 with policy expert_choice", has_value=False))
    if r.node_limited_max_nodes is not None and r.policy != "token_choice":
        out.append(Problem("routing.node_limited_max_nodes", r.node_limited_max_nodes,
                           "node-limited routing restricts a token's choices, so it needs policy token_choice",
                           f"null with {r.policy}"))
    im = r.imbalance
    if r.policy == "cyclic" and im.model != "uniform":
        out.append(Problem("routing.imbalance.model", im.model,
                           "cyclic routing assigns experts by token index, balanced by construction: "
                           "a popularity model would be ignored", "uniform with policy cyclic"))
    if r.policy == "cyclic" and im.drift.model != "none":
        out.append(Problem("routing.imbalance.drift.model", im.drift.model,
                           "cyclic routing does not change over a run", "none with policy cyclic"))
    needs = {"zipf": "s", "dirichlet": "alpha", "trace": "trace_file"}
    for model, param in needs.items():
        value = getattr(im, param)
        if im.model == model and value is None:
            out.append(Problem(f"routing.imbalance.{param}", None, f"is required by imbalance model {model}",
                               "a number > 0" if param != "trace_file" else "a Parquet file of expert counts",
                               has_value=False))
        if im.model != model and value is not None:
            out.append(Problem(f"routing.imbalance.{param}", value,
                               f"is used only by imbalance model {model} (model is {im.model})",
                               f"null, or routing.imbalance.model: {model}"))
    d = im.drift
    if d.bias_update_speed is not None and d.model != "bias_balancing":
        out.append(Problem("routing.imbalance.drift.bias_update_speed", d.bias_update_speed,
                           f"is used only by drift model bias_balancing (model is {d.model})", "null"))
    if d.aux_loss_coeff is not None and d.model not in ("aux_loss", "bias_balancing"):
        out.append(Problem("routing.imbalance.drift.aux_loss_coeff", d.aux_loss_coeff,
                           f"is used only by drift models aux_loss and bias_balancing (model is {d.model})", "null"))
    return out


def check_training(s: Scenario) -> list[Problem]:
    tr = s.training
    out: list[Problem] = []
    if tr.fp8_expert_activations and s.model.moe is None:
        out.append(Problem("training.fp8_expert_activations", True,
                           "stores routed experts' activations in FP8, and a dense model has no routed experts",
                           "false for a dense model"))
    return out


def check_host(s: Scenario) -> list[Problem]:
    from simmoe.engine.host import cpu_names

    names = cpu_names()
    out = []
    if s.host.cpu not in names:
        out.append(Problem("host.cpu", s.host.cpu, "is not a known host CPU (simmoe/data/host/cpus.yaml)",
                           ", ".join(names)))
    p = s.parallelism
    if s.host.pipeline_sync:
        if s.host.stack == "none":
            out.append(Problem("host.pipeline_sync", True,
                               "is a wait of the host, and host.stack none models no host",
                               "false or null, or host.stack: megatron_core"))
        if p.schedule != "1f1b" or p.pp < 2 or p.pipeline_p2p != "async":
            out.append(Problem("host.pipeline_sync", True,
                               f"is Megatron-Core's batched 1F1B exchange (schedule {p.schedule}, "
                               f"pp={p.pp}, pipeline_p2p {p.pipeline_p2p} given)",
                               "false or null, or schedule: 1f1b with pp >= 2 and pipeline_p2p: async"))
    scope = s.host.cuda_graph_scope
    if scope and s.host.stack == "none":
        out.append(Problem("host.cuda_graph_scope", scope,
                           "takes ops off the host, and host.stack none models no host",
                           "[] or host.stack: megatron_core"))
    if "moe_preprocess" in scope and "moe_router" not in scope:
        out.append(Problem("host.cuda_graph_scope", scope,
                           "graphs the dispatcher's preprocessing without the router before it "
                           "(Megatron-Core requires moe_router with moe_preprocess)",
                           "add moe_router"))
    if len(set(scope)) != len(scope):
        out.append(Problem("host.cuda_graph_scope", scope, "names a scope twice", "each scope once"))
    return out


def check_scenario(s: Scenario) -> list[Problem]:
    """Every cross-field rule that needs no file; ``parallelism.dp`` must be resolved."""
    return (check_model(s) + check_training(s) + check_parallelism(s) + check_routing(s)
            + check_host(s))
