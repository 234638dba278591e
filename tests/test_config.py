"""Scenario loading: extends, overrides, and one test per class of bad input.

The GPU count of the cluster comes from a stand-in topology summary (monkeypatched), so these
tests pin the scenario rules and not the sizes of the shipped topologies.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from simmoe.config import ScenarioError, load_scenario, resolve_scenario_dict
from simmoe.config import loader
from simmoe.config.rules import split_stage_layers
from simmoe.config.schema import Parallelism
from simmoe.errors import ConfigError

# A small valid MoE scenario: 16 GPUs (2 nodes x 8) -> dp 16, ep 4, edp 4.
BASE = {
    "model": {
        "name": "t",
        "layers": 4,
        "hidden": 256,
        "attention": {"type": "gqa", "heads": 8, "kv_heads": 2, "head_dim": 32},
        "vocab": 1000,
        "moe": {"routed_experts": 8, "top_k": 2, "expert_ffn": 512},
    },
    "training": {"seq_len": 256, "global_batch": 32, "micro_batch": 2, "total_tokens": 1e9},
    "parallelism": {"ep": 4},
    "cluster": {"topology": "fake-topo.yaml"},
}


@pytest.fixture
def topo(monkeypatch, tmp_path):
    """A stand-in topology: edit the returned dict to change its size or GPU model."""
    (tmp_path / "fake-topo.yaml").write_text("name: fake\n")
    state = {"num_nodes": 2, "gpus_per_node": 8, "gpu_model": "H100-SXM"}

    def summary(path):
        return SimpleNamespace(num_gpus=state["num_nodes"] * state["gpus_per_node"], **state)

    monkeypatch.setattr(loader, "_topology_summary", summary)
    return state


def write(tmp_path: Path, name: str, data) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def variant(**changes) -> dict:
    """BASE with dotted-path changes; a value of ... deletes the key."""
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        *head, last = key.split("__")
        node = data
        for part in head:
            node = node.setdefault(part, {})
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return data


def expect(path, *fragments, overrides=None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_scenario(path, overrides)
    msg = str(info.value)
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in: {msg}"
    return info.value


# ------------------------------------------------------------------------------ valid resolution


def test_base_loads_and_derives_dp_edp(tmp_path, topo):
    s = load_scenario(write(tmp_path, "s.yaml", BASE))
    assert (s.parallelism.dp, s.parallelism.edp, s.gpus, s.cluster.nodes) == (16, 4, 16, 2)
    assert s.micro_batches_per_step == 32 // (2 * 16)
    assert s.stage_layers() == (4,)
    assert s.model.moe_layer_indices() == (0, 1, 2, 3)


def test_extends_deep_merges_and_overrides_apply_in_order(tmp_path, topo):
    write(tmp_path, "parent.yaml", {**BASE, "overrides": {"routing.dispatch_dtype": "fp8"}})
    child = {
        "extends": "../parent.yaml",  # relative to the child's folder
        "model": {"layers": 8, "moe": {"top_k": 1}},  # merges into the parent's model / moe
        "routing": {"dispatch_dtype": "bf16"},  # a child's own value beats a parent's override
        "overrides": {"parallelism.ep": 8, "training.micro_batch": 1},
    }
    path = write(tmp_path, "sub/child.yaml", child)
    write(tmp_path, "sub/fake-topo.yaml", "name: fake\n")
    s = load_scenario(path, ["training.micro_batch=2", "routing.capacity_factor=null"])
    assert s.model.layers == 8 and s.model.hidden == 256  # child value, parent value kept
    assert s.model.moe.top_k == 1 and s.model.moe.routed_experts == 8
    assert s.routing.dispatch_dtype == "bf16"
    assert s.parallelism.ep == 8  # the file's overrides
    assert s.training.micro_batch == 2  # the command line wins over everything


def test_extends_chain_null_removes_a_section_and_lists_replace(tmp_path, topo):
    write(tmp_path, "a.yaml", variant(model__moe__layer_pattern=[0, 1, 2, 3], model__dense_ffn=512))
    write(tmp_path, "b.yaml", {"extends": "a.yaml", "model": {"moe": {"layer_pattern": [1, 3]}}})
    c = write(tmp_path, "c.yaml", {"extends": "b.yaml", "parallelism": {"ep": 1}})
    assert load_scenario(c).model.moe_layer_indices() == (1, 3)  # replaced, not concatenated
    dense = load_scenario(c, {"model.moe": None, "model.dense_ffn": 1024})
    assert dense.model.moe is None and dense.parallelism.edp == 16


def test_resolve_scenario_dict_returns_merged_mapping(tmp_path, topo):
    write(tmp_path, "p.yaml", BASE)
    path = write(tmp_path, "c.yaml", {"extends": "p.yaml", "overrides": {"parallelism.tp": 2}})
    data = resolve_scenario_dict(path, {"routing.imbalance.s": 1.1})
    assert "extends" not in data and "overrides" not in data
    assert data["parallelism"] == {"ep": 4, "tp": 2}
    assert data["routing"] == {"imbalance": {"s": 1.1}}  # missing sections are created


def test_yaml_exponent_floats_are_numbers(tmp_path, topo):
    text = yaml.safe_dump(BASE).replace("total_tokens: 1000000000.0", "total_tokens: 14.8e12")
    assert "14.8e12" in text
    assert load_scenario(write(tmp_path, "s.yaml", text)).training.total_tokens == 14.8e12


def test_uneven_pipeline_split(tmp_path, topo):
    # DeepSeek-V3 shape: 61 layers + 1 MTP = 62 blocks over 16 stages, 4 on the first, 2 on the last.
    topo["num_nodes"] = 16 * 2 // 8 * 2  # 32 GPUs: pp 16 x dp 2
    s = load_scenario(write(tmp_path, "s.yaml", variant(
        model__layers=61, model__mtp_depth=1, model__dense_layers=3, model__dense_ffn=512,
        parallelism={"pp": 16, "first_stage_layers": 4, "last_stage_layers": 2},
        training__global_batch=32)))
    assert s.stage_layers() == (4,) + (4,) * 14 + (2,)
    assert sum(s.stage_layers()) == 62


@given(pp=st.integers(1, 8), vpp=st.integers(1, 3), blocks=st.integers(1, 80),
       first=st.none() | st.integers(0, 10), last=st.none() | st.integers(0, 10))
def test_stage_split_conserves_blocks(pp, vpp, blocks, first, last):
    par = Parallelism(pp=pp, vpp=vpp, first_stage_layers=first, last_stage_layers=last)
    split = split_stage_layers(blocks, par)
    if split is not None:
        assert len(split) == pp * vpp and sum(split) == blocks
        middle = split[1:-1] if len(split) > 2 else ()
        assert len(set(middle)) <= 1 and all(x >= 1 for x in middle)
    elif first is None and last is None:
        assert pp * vpp > 1 and blocks % (pp * vpp) != 0 or blocks < pp * vpp


@given(pp=st.integers(1, 4), vpp=st.integers(1, 3), counts=st.lists(st.integers(0, 4), min_size=1, max_size=12),
       blocks=st.integers(1, 30))
def test_stage_layers_split_is_the_given_one_or_none(pp, vpp, counts, blocks):
    par = Parallelism(pp=pp, vpp=vpp, stage_layers=counts)
    split = split_stage_layers(blocks, par)
    assert split == (tuple(counts) if len(counts) == pp * vpp and sum(counts) == blocks else None)


def test_stage_layers_list(tmp_path, topo):
    # Automodel's AutoPipeline shape: 61 layers over 32 stages, 29 of two and three of one.
    topo["num_nodes"] = 4  # 32 GPUs: pp 4 x dp 8
    split = [2] * 29 + [1] * 3
    s = load_scenario(write(tmp_path, "s.yaml", variant(
        model__layers=61, model__dense_layers=3, model__dense_ffn=512,
        parallelism={"pp": 4, "vpp": 8, "schedule": "interleaved", "stage_layers": split},
        training__global_batch=32)))
    assert s.stage_layers() == tuple(split)


@pytest.mark.parametrize("par,field,message", [
    (dict(pp=4, stage_layers=[1, 1, 2]), "parallelism.stage_layers", "has 3 entries for pp*vpp=4*1=4"),
    (dict(pp=4, stage_layers=[1, 1, 1, 0]), "parallelism.stage_layers", "sums to 3, not to the 4 blocks"),
    (dict(pp=4, stage_layers=[1, 1, 1, 1], last_stage_layers=1), "parallelism.stage_layers",
     "together with first_stage_layers"),
    (dict(pp=4, stage_layers=[2, 1, 1, 0]), "parallelism.stage_layers",
     "fewer than the model.mtp_depth=1 MTP modules"),
    (dict(pp=4, first_stage_layers=2, last_stage_layers=0), "parallelism.last_stage_layers",
     "fewer than the model.mtp_depth=1 MTP modules"),
])
def test_bad_stage_layers(tmp_path, topo, par, field, message):
    topo["num_nodes"] = 1
    mtp = 1 if "mtp" in message else 0
    path = write(tmp_path, "s.yaml", variant(
        model__layers=4 - mtp, model__mtp_depth=mtp, model__dense_layers=1, model__dense_ffn=512,
        parallelism=dict(par, dp=2), training__global_batch=16))
    with pytest.raises(ConfigError) as e:
        load_scenario(path)
    assert field in str(e.value) and message in str(e.value)


def test_without_topology_dp_must_be_given(tmp_path):
    path = write(tmp_path, "s.yaml", BASE)  # fake-topo.yaml does not exist: it is never read
    with pytest.raises(ConfigError, match="parallelism.dp"):
        load_scenario(path, check_topology=False)
    s = load_scenario(path, ["parallelism.dp=16"], check_topology=False)
    assert s.parallelism.edp == 4 and s.cluster.nodes is None


# ---------------------------------------------------------------------- bad input, one per class


def test_missing_field(tmp_path, topo):
    path = write(tmp_path, "s.yaml", variant(model__hidden=...))
    err = expect(path, "s.yaml", "model.hidden", "required field is missing", "allowed: an integer > 0")
    assert err.field == "model.hidden"


def test_missing_discriminated_field(tmp_path, topo):
    path = write(tmp_path, "s.yaml", variant(model__attention={"type": "gqa", "heads": 8}))
    expect(path, "s.yaml", "model.attention.kv_heads", "required field is missing", "integer > 0")


def test_wrong_type(tmp_path, topo):
    path = write(tmp_path, "s.yaml", variant(model__layers="many"))
    expect(path, "s.yaml", "model.layers='many'", "wrong type (string)", "allowed: an integer > 0")


def test_quoted_number_is_wrong_type(tmp_path, topo):
    path = write(tmp_path, "s.yaml", variant(parallelism={"ep": "4"}))
    expect(path, "parallelism.ep='4'", "wrong type", "an integer > 0")


@pytest.mark.parametrize(("field", "value", "allowed"), [
    ("training__micro_batch", 0, "an integer > 0"),
    ("model__hidden", -256, "an integer > 0"),
    ("training__zero_stage", 4, "an integer >= 0 and <= 3"),
    ("costs", {"pue": 0.9}, "a number >= 1.0"),
])
def test_out_of_range(tmp_path, topo, field, value, allowed):
    path = write(tmp_path, "s.yaml", variant(**{field: value}))
    dotted = field.replace("__", ".") if not isinstance(value, dict) else "costs.pue"
    expect(path, "s.yaml", dotted, "out of range", allowed)


def test_unknown_field_lists_allowed_fields(tmp_path, topo):
    path = write(tmp_path, "s.yaml", variant(parallelism={"ep": 4, "sequence_paralel": True}))
    expect(path, "s.yaml", "parallelism.sequence_paralel=True", "unknown field; did you mean sequence_parallel?",
           "fields of parallelism: tp, pp, vpp, cp, ep, expert_tp, dp")


def test_unknown_top_level_section(tmp_path, topo):
    path = write(tmp_path, "s.yaml", {**BASE, "hardware": {"gpu": "H100"}})
    expect(path, "hardware=", "unknown field", "fields of the top level: name, description, model")


def test_not_an_allowed_value(tmp_path, topo):
    path = write(tmp_path, "s.yaml", variant(training__precision="fp16"))
    expect(path, "training.precision='fp16'", "not an allowed value", "one of bf16, fp8")


def test_unknown_attention_type(tmp_path, topo):
    path = write(tmp_path, "s.yaml", variant(model__attention={"type": "linear", "heads": 8}))
    expect(path, "model.attention.type='linear'", "unknown type", "one of mha, gqa, mla")


def test_gpu_count_mismatch_names_the_product(tmp_path, topo):
    path = write(tmp_path, "s.yaml", variant(parallelism={"ep": 4, "dp": 8}))
    err = expect(path, "s.yaml", "parallelism.dp=8", "tp*pp*cp*dp = 1*1*1*8 = 8 GPUs", "has 16 GPUs",
                 "allowed: dp = 16 to use all 16 GPUs, or cluster.nodes: 1")
    assert err.value == 8
    path = write(tmp_path, "n.yaml", variant(parallelism={"ep": 4, "dp": 8}, cluster={"topology": "fake-topo.yaml", "nodes": 2}))
    expect(path, "parallelism.dp=8", "but the cluster uses 16 (2 nodes x 8 GPUs", "allowed: dp = 16")


def test_model_parallel_size_does_not_divide_gpus(tmp_path, topo):
    path = write(tmp_path, "s.yaml", variant(parallelism={"pp": 3}, model__layers=3))
    expect(path, "s.yaml", "parallelism.pp=3", "tp*pp*cp = 1*3*1 = 3 does not divide the 16 GPUs",
           "divisors of 16")


def test_ep_must_divide_experts(tmp_path, topo):
    topo["num_nodes"] = 12  # 96 GPUs, so ep=48 divides the 96 dp ranks and only the expert rule fails
    path = write(tmp_path, "s.yaml", variant(model__moe__routed_experts=256, parallelism={"ep": 48},
                                             training__global_batch=96, training__micro_batch=1))
    err = expect(path, "s.yaml", "parallelism.ep=48: does not divide model.moe.routed_experts=256",
                 "divisors of 256: 1, 2, 4, 8, 16, 32, 64, 128, 256")
    assert isinstance(err, ScenarioError) and len(err.errors) == 1


def test_ep_must_divide_dp_ranks(tmp_path, topo):
    topo["num_nodes"] = 1  # 8 GPUs: dp 8, ep 16 does not fit
    path = write(tmp_path, "s.yaml", variant(model__moe__routed_experts=16, parallelism={"ep": 16},
                                             training__global_batch=16, training__micro_batch=1))
    expect(path, "parallelism.ep=16", "does not divide tp*cp*dp = 1*1*8 = 8",
           "ep*expert_tp among the divisors of 8: 1, 2, 4, 8")


def test_layers_must_split_over_pipeline_stages(tmp_path, topo):
    path = write(tmp_path, "s.yaml", variant(model__layers=10, parallelism={"pp": 4, "ep": 4}))
    expect(path, "s.yaml", "model.layers=10", "10 blocks", "do not split evenly over pp*vpp=4*1=4",
           "divisible by 4", "first_stage_layers")


def test_global_batch_must_divide(tmp_path, topo):
    path = write(tmp_path, "s.yaml", variant(training__global_batch=40))
    expect(path, "training.global_batch=40", "micro_batch*dp = 2*16 = 32", "a multiple of 32")


def test_schedule_runs_must_divide_the_step(tmp_path, topo):
    # dp=16, micro_batch 2: global_batch 128 gives 4 micro-batches per step; runs of 3 do not fit.
    path = write(tmp_path, "s.yaml", variant(training__global_batch=128,
                                             parallelism={"schedule_micro_batches": 3}))
    expect(path, "parallelism.schedule_micro_batches=3", "does not divide the 4 micro-batches per step",
           "a divisor of 4, or null")


def test_dualpipe_runs_need_enough_micro_batches(tmp_path, topo):
    # pp=2 leaves dp=8: global_batch 128 gives 8 micro-batches; runs of 2 are fewer than 2*pp = 4.
    path = write(tmp_path, "s.yaml", variant(parallelism={"pp": 2, "schedule": "dualpipe",
                                                          "schedule_micro_batches": 2},
                                             training__global_batch=128))
    expect(path, "parallelism.schedule_micro_batches=2", "too few micro-batches for one run of DualPipe",
           "an even divisor of 8 that is at least 4, or null")


def test_blocking_pipeline_sends_need_a_modelled_runtime(tmp_path, topo):
    path = write(tmp_path, "s.yaml", variant(parallelism={"pp": 2, "pipeline_p2p": "blocking"}))
    expect(path, "s.yaml", "parallelism.pipeline_p2p='blocking'", "PipelineScheduleMulti",
           "async, or parallelism.schedule: interleaved or dualpipe")
    path = write(tmp_path, "t.yaml", variant(parallelism={"pp": 2, "pipeline_p2p": "lockstep"}))
    expect(path, "parallelism.pipeline_p2p", "async", "blocking")


def test_top_k_above_experts(tmp_path, topo):
    path = write(tmp_path, "s.yaml", variant(model__moe__top_k=9, parallelism={"ep": 1}))
    expect(path, "model.moe.top_k=9", "exceeds model.moe.routed_experts=8", "1..8")


def test_node_limited_at_least_one(tmp_path, topo):
    path = write(tmp_path, "s.yaml", variant(routing={"node_limited_max_nodes": 0}))
    expect(path, "routing.node_limited_max_nodes=0", "out of range", "an integer >= 1 or null")


def test_gpus_above_topology(tmp_path, topo):
    path = write(tmp_path, "s.yaml", variant(cluster={"topology": "fake-topo.yaml", "nodes": 3}))
    expect(path, "s.yaml", "cluster.nodes=3", "more than the topology fake-topo.yaml (2 nodes x 8 GPUs)",
           "allowed: 1..2")


def test_fp8_on_a_gpu_without_fp8(tmp_path, topo):
    topo["gpu_model"] = "A100-SXM-80GB"
    path = write(tmp_path, "s.yaml", variant(training__precision="fp8"))
    expect(path, "training.precision='fp8'", "A100-SXM-80GB", "no FP8", "allowed: bf16")


def test_routing_rules(tmp_path, topo):
    path = write(tmp_path, "s.yaml", variant(routing={"execution": "padded", "imbalance": {"model": "zipf"}}))
    err = expect(path, "2 problems", "routing.capacity_factor", "padded execution", "routing.imbalance.s",
                 "required by imbalance model zipf")
    assert [e.field for e in err.errors] == ["routing.capacity_factor", "routing.imbalance.s"]


def test_fp8_expert_activations_needs_routed_experts(tmp_path, topo):
    path = write(tmp_path, "s.yaml", variant(model__moe=None, model__dense_ffn=1024, parallelism={"ep": 1},
                                             training__fp8_expert_activations=True))
    expect(path, "training.fp8_expert_activations=True", "dense model has no routed experts",
           "allowed: false for a dense model")
    moe = load_scenario(write(tmp_path, "m.yaml", variant(training__fp8_expert_activations=True,
                                                           training__activation_offload=True)))
    assert moe.training.fp8_expert_activations and moe.training.activation_offload


def test_all_schema_errors_reported_together(tmp_path, topo):
    path = write(tmp_path, "s.yaml", variant(model__hidden=..., training__micro_batch=0, parallelism={"tpp": 2}))
    err = expect(path, "3 problems")
    assert {e.field for e in err.errors} == {"model.hidden", "training.micro_batch", "parallelism.tpp"}


def test_error_names_the_file_and_line_that_set_the_value(tmp_path, topo):
    write(tmp_path, "parent.yaml", variant(training__global_batch=40))
    child = write(tmp_path, "child.yaml", {"extends": "parent.yaml", "name": "c"})
    err = expect(child, "parent.yaml:")
    line = (tmp_path / "parent.yaml").read_text().splitlines().index("  global_batch: 40") + 1
    assert err.file.endswith(f"parent.yaml:{line}")
    expect(child, "child.yaml", "(--set training.micro_batch=0)", "training.micro_batch=0",
           overrides=["training.micro_batch=0"])


def test_override_without_equals_sign(tmp_path, topo):
    path = write(tmp_path, "s.yaml", BASE)
    expect(path, "s.yaml (--set)", "parallelism.ep", "KEY=VALUE", overrides=["parallelism.ep"])


def test_override_into_a_value(tmp_path, topo):
    path = write(tmp_path, "s.yaml", BASE)
    expect(path, "cannot set model.name.x", "model.name is a value", overrides=["model.name.x=1"])


def test_extends_cycle(tmp_path, topo):
    write(tmp_path, "a.yaml", {"extends": "b.yaml", **BASE})
    write(tmp_path, "b.yaml", {"extends": "a.yaml"})
    expect(tmp_path / "a.yaml", "extends cycle: a.yaml -> b.yaml -> a.yaml", "b.yaml", "extends=")


def test_extends_missing_file(tmp_path, topo):
    path = write(tmp_path, "s.yaml", {"extends": "nope.yaml", **BASE})
    expect(path, "s.yaml:1", "extends='nope.yaml'", "scenario file not found", "allowed: a path")


def test_yaml_syntax_error_names_file_and_line(tmp_path, topo):
    path = write(tmp_path, "s.yaml", "model:\n  name: t\n  layers: [1, 2\ntraining: {}\n")
    err = expect(path, "s.yaml:", "invalid YAML")
    assert err.file.rsplit(":", 1)[1].isdigit()


def test_duplicate_key(tmp_path, topo):
    path = write(tmp_path, "s.yaml", yaml.safe_dump(BASE) + "model: {}\n")
    expect(path, "s.yaml:", "model", "duplicate key")


def test_missing_scenario_file(tmp_path):
    expect(tmp_path / "absent.yaml", "absent.yaml", "scenario file not found")


def test_scenario_not_a_mapping(tmp_path):
    path = write(tmp_path, "s.yaml", "- 1\n- 2\n")
    expect(path, "s.yaml", "a scenario is a mapping of sections, not a list")


def test_unknown_topology_name(tmp_path):
    path = write(tmp_path, "s.yaml", variant(cluster={"topology": "no-such-topology"}))
    expect(path, "s.yaml", "cluster.topology='no-such-topology'", "topology file not found")


def test_dualpipe_needs_an_even_micro_batch_count_of_at_least_2pp(tmp_path, topo):
    # pp=2 leaves dp=8, so micro_batch*dp = 16 and global_batch 48 gives 3 micro-batches per step.
    path = write(tmp_path, "s.yaml", variant(parallelism={"pp": 2, "schedule": "dualpipe"},
                                             training__global_batch=48))
    expect(path, "training.global_batch=48", "gives 3 micro-batches per step; DualPipe needs an even number, "
           "at least 2*pp = 4", "a multiple of 32 that is at least 64")
