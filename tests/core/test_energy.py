"""core.energy: op and traffic counts pinned against a hand count, constants, additivity, rounds.

The hand count is of a 2-layer binary MLP 16-8-4 at batch 4:
``BinaryLinear(16, 8, data) -> BN(8) -> sign -> BinaryLinear(8, 4) -> BN(4)``.
"""

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from core.autograd import InputKind
from core.energy import (
    HOROWITZ_45NM,
    OP_KINDS,
    TRAFFIC_KINDS,
    count_model_step,
    count_step,
    device_round_fields,
    energy_ratio,
    format_energy_table,
    get_constants,
    load_constants,
    local_steps,
    round_energy,
    step_energy,
)
from core.energy.count import WorkCounts
from core.layers import BinaryLinear, SignActivation, batch_norm
from core.recipes import from_recipe

B = 4


def tiny_mlp(recipe: str) -> nn.Module:
    rec = from_recipe(recipe)
    torch.manual_seed(0)
    return nn.Sequential(
        BinaryLinear(16, 8, rec, input_kind=InputKind.DATA),
        batch_norm(8, rec, spatial=False),
        SignActivation(rec),
        BinaryLinear(8, 4, rec),
        batch_norm(4, rec, spatial=False),
    )


def count_tiny(recipe: str):
    return count_model_step(tiny_mlp(recipe), recipe, B, (16,), trace_batch=B)


def as_dicts(work: WorkCounts):
    return (
        {k: v for k, v in work.ops.items() if v},
        {k: v for k, v in work.traffic.items() if v},
    )


class TestHandCount:
    def test_standard(self):
        # Per layer (B=4; float32: 4 bytes everywhere; W1: 16x8 = 128, W2: 8x4 = 32 weights):
        # L1 data dense, binary W: MACs 4*8*16 = 512 fwd, 512 for dW (no dX for data).
        #   fwd: X 4*16*4 = 256 + Y 4*8*4 = 128 activations; W_b 512 + STE read W, write W_b
        #   1024 weights; STE 4*128 = 512 elem. bwd: dY 128; saved X 256 + W (mask) 512;
        #   dW_b 512 + STE read dW_b, write dW 1024 weight grads; STE 2*128 = 256 elem.
        # BN1 (32 values, gamma+beta 16): fwd 2*128 + 128 act, 8*32 elem, 64 weights;
        #   bwd 2*128 + 128 grads, saved y twice 256, 8*32 elem, 64 weight grads.
        # sign (32): fwd 128 + 128 act, 4*32 elem; bwd 128 + 128 grads, saved x 128, 2*32 elem.
        # L2 binary in, binary W: MACs 4*4*8 = 128 per product, 3 products.
        #   fwd: X 128 + Y 64 act; W_b 128 + STE 256 weights; 4*32 elem.
        #   bwd: dX: dY 64 + dX 128 grads, saved W_b 128; dW: dY 64, saved X 128, dW_b 128
        #   + STE 256 weight grads, saved W 128; 2*32 elem.
        # BN2 (16 values, 8 params): fwd 2*64 + 64 act, 128 elem, 32 weights;
        #   bwd 2*64 + 64 grads, saved 128, 128 elem, 32 weight grads.
        # Adam over 128 + 32 + 16 + 8 = 184 floats: g read 4*184 = 736, W/m/v read+write
        #   24*184 = 4416, 10*184 = 1840 elem.
        ops, traffic = as_dicts(count_tiny("standard").total)
        assert ops == {
            "fp32_mac": 512 + 512 + 3 * 128,
            "fp32_elem": (512 + 256) + 2 * 256 + (128 + 64) + (128 + 64) + 2 * 128 + 1840,
        }
        assert traffic == {
            "weights": 1536 + 64 + 384 + 32,
            "activations": 384 + 384 + 256 + 192 + 192,
            "activation_grads": 128 + 384 + 256 + (192 + 64) + 192,
            "saved_read": (256 + 512) + 256 + 128 + (128 + 128 + 128) + 128,
            "weight_grads": (512 + 1024) + 64 + (128 + 256) + 32 + 736,
            "optimizer": 4416,
        }

    def test_lowcost(self):
        # uint8 codes in (1 B), fp16/bf16 activations (2 B), fp16 W, packed bits.
        # L1 data, binary W: 512 int8 MACs fwd; G = dY^T X 512 fp16 MACs (X real codes).
        #   fwd: X 4*16*1 = 64 + Y 4*8*2 = 64 act; W 128*2 = 256; sign(W) 128 int.
        #   bwd: dY 64 grads; saved codes 64; sign(G) packed 8 rows * 2 B = 16; 128 int.
        # BN1 l1 (32 values; bits 4 samples * 1 B = 4; beta 8): fwd 3*64 + 64 act, bits 4
        #   written, 7*32 fp16 + 2*32 int, beta 16 B; bwd 2*64 + 64 grads, bits read twice 8,
        #   6*32 fp16 + 2*32 int, 16 B beta grad.
        # sign (32): fwd 64 + 64 act, mask 4 written, 3*32 int; bwd 64 + 64 grads, mask 4
        #   read, 32 int + 32 fp16.
        # L2 binary in, binary W: 128 binary MACs fwd, 128 + 128 sign-select MACs bwd.
        #   fwd: X 64 + Y 32 act; W 64; sign(W) 32 int; sign(X) packed 4 written, 2*32 int.
        #   bwd: dX: dY 32 + dX 64 grads, W 64, 32 int; G: dY 32 grads, sign(X) 4 read,
        #   unpack 32 int, sign(G) 4 rows * 1 B = 4, 32 int.
        # BN2 (16 values, bits 4, beta 4): fwd 3*32 + 32 act, 4 bits, 7*16 fp16 + 2*16 int,
        #   8 B; bwd 2*32 + 32 grads, 8 bits, 6*16 fp16 + 2*16 int, 8 B.
        # LowCostAdam: W1 bits 16 + 12*128, 8*128 fp32, 6*128 int; W2 bits 4 + 12*32,
        #   8*32 fp32, 6*32 int; beta1/beta2 (dense fp16, bf16 moments): grads 2n, 12n
        #   state, 12n fp32, 4n int for n = 8, 4.
        ops, traffic = as_dicts(count_tiny("lowcost").total)
        assert ops == {
            "int8_mac": 512,
            "fp16_mac": 512,
            "binary_mac": 128,
            "fp16_sign_mac": 256,
            "fp16_elem": (224 + 192) + 32 + (112 + 96),
            "fp32_elem": 1024 + 256 + 96 + 48,
            "int_elem": (128 + 128)
            + (64 + 64)
            + (96 + 32)
            + (32 + 64 + 32 + 32 + 32)
            + (32 + 32)
            + (768 + 192 + 32 + 16),
        }
        assert traffic == {
            "weights": 256 + 16 + 64 + 64 + 8,
            "activations": 128 + 256 + 128 + 96 + 128,
            "activation_grads": 64 + 192 + 128 + (96 + 32) + 96,
            "saved_written": 4 + 4 + 4 + 4,
            "saved_read": 64 + 8 + 4 + 4 + 8,
            "weight_grads": 16 + 16 + 4 + 8 + (16 + 4 + 16 + 8),
            "optimizer": 1536 + 384 + 96 + 48,
        }

    def test_phases_split_the_total(self):
        step = count_tiny("lowcost")
        assert step.forward.ops["binary_mac"] == 128
        assert step.backward.ops["fp16_sign_mac"] == 256
        assert step.optimizer.traffic["optimizer"] == 1536 + 384 + 96 + 48
        assert step.forward.traffic["weight_grads"] == 0

    def test_traced_batch_size_does_not_change_counts(self):
        small = count_model_step(tiny_mlp("lowcost"), "lowcost", 64, (16,), trace_batch=2)
        full = count_model_step(tiny_mlp("lowcost"), "lowcost", 64, (16,), trace_batch=64)
        assert small.total.ops == full.total.ops
        assert small.total.traffic == full.total.traffic
        assert small.total.ops["int8_mac"] == 64 * 8 * 16

    def test_counts_scale_with_the_batch_except_weights(self):
        one = count_tiny("standard").total
        two = count_model_step(tiny_mlp("standard"), "standard", 2 * B, (16,)).total
        assert two.ops["fp32_mac"] == 2 * one.ops["fp32_mac"]
        assert two.traffic["optimizer"] == one.traffic["optimizer"]
        assert two.traffic["activations"] == 2 * one.traffic["activations"]


class TestRealModels:
    def test_mlp_macs_by_kind(self):
        low = count_step("mlp", "lowcost", 100, (1, 28, 28)).total
        std = count_step("mlp", "standard", 100, (1, 28, 28)).total
        weights_after_first = 3 * 256 * 256 + 256 * 10
        assert low.ops["binary_mac"] == 100 * weights_after_first
        assert low.ops["int8_mac"] == 100 * 784 * 256
        assert low.ops["fp32_mac"] == 0
        # standard: forward and dW of every layer, dX of all but the data layer
        assert std.ops["fp32_mac"] == 100 * (3 * 784 * 256 + 3 * weights_after_first - 784 * 256)

    def test_cnv_conv_macs_use_output_positions(self):
        step = count_step("cnv", "lowcost", 2, (3, 32, 32))
        first = step.layers[0]
        assert first.layer.kind == "weight" and first.layer.input_kind == "data"
        assert first.forward.ops["int8_mac"] == 2 * (64 * 30 * 30) * (3 * 3 * 3)

    def test_unknown_layer_is_refused(self):
        model = nn.Sequential(tiny_mlp("standard"), nn.GELU())
        with pytest.raises(ValueError, match="no energy-count rule for layer type GELU"):
            count_model_step(model, "standard", 2, (16,))

    def test_model_and_recipe_must_match(self):
        from core.models import build_model

        model = build_model("mlp", "lowcost", in_shape=(1, 8, 8))
        with pytest.raises(ValueError, match="count with the recipe the model was built with"):
            count_model_step(model, "standard", 2, (1, 8, 8))


class TestEnergy:
    def test_compute_plus_memory_is_total_and_additive(self):
        step = count_tiny("lowcost")
        total = step_energy(step)
        assert total.compute_j + total.memory_j == pytest.approx(total.total_j, rel=1e-12)
        parts = [step_energy(lc.forward) for lc in step.layers]
        parts += [step_energy(lc.backward) for lc in step.layers]
        parts.append(step_energy(step.optimizer))
        assert sum(p.total_j for p in parts) == pytest.approx(total.total_j, rel=1e-12)
        assert sum(total.compute_by_kind.values()) == pytest.approx(total.compute_j, rel=1e-12)

    def test_energy_is_the_priced_counts(self):
        step = count_tiny("standard")
        e = step_energy(step)
        work = step.total
        compute = (work.ops["fp32_mac"] * (3.7 + 0.9) + work.ops["fp32_elem"] * 0.9) * 1e-12
        memory = work.total_bytes * 1300 / 8 * 1e-12
        assert e.compute_j == pytest.approx(compute, rel=1e-12)
        assert e.memory_j == pytest.approx(memory, rel=1e-12)

    def test_override_changes_only_what_it_prices(self):
        step = count_tiny("standard")
        base = step_energy(step)
        cheaper = step_energy(step, dataclasses.replace(HOROWITZ_45NM, fp32_mult_pj=1.7))
        saved = step.total.ops["fp32_mac"] * 2.0 * 1e-12
        assert base.compute_j - cheaper.compute_j == pytest.approx(saved, rel=1e-12)
        assert cheaper.memory_j == base.memory_j
        sram = step_energy(step, get_constants("horowitz-45nm-sram"))
        assert sram.memory_j == pytest.approx(base.memory_j * 100 / 1300, rel=1e-12)

    def test_load_constants_from_toml_and_json(self, tmp_path):
        toml = tmp_path / "phone.toml"
        toml.write_text('device_class = "phone"\ndram_pj = 650.0\n[lte]\ntail_s = 5.0\n')
        k = load_constants(toml)
        assert (k.device_class, k.dram_pj, k.lte.tail_s) == ("phone", 650.0, 5.0)
        assert k.lte.tail_mw == 1060.0 and k.fp32_add_pj == 0.9
        js = tmp_path / "chip.json"
        js.write_text(json.dumps({"binary_mac_pj": 0.01}))
        assert load_constants(js).binary_mac_pj == 0.01

    def test_bad_constants_are_refused(self, tmp_path):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"dram_nj": 1.0}))
        with pytest.raises(ValueError, match="unknown energy constant 'dram_nj'"):
            load_constants(bad)
        with pytest.raises(ValueError, match="memory_level 'l9' is unknown"):
            dataclasses.replace(HOROWITZ_45NM, memory_level="l9")
        with pytest.raises(ValueError, match="fp16_add_pj must be a number >= 0"):
            dataclasses.replace(HOROWITZ_45NM, fp16_add_pj=-1.0)
        with pytest.raises(ValueError, match="unknown operation kind 'fp8_mac'"):
            HOROWITZ_45NM.op_pj("fp8_mac")

    def test_every_kind_has_a_price(self):
        prices = {k: HOROWITZ_45NM.op_pj(k) for k in OP_KINDS}
        assert prices == pytest.approx(
            {
                "fp32_mac": 4.6,
                "fp16_mac": 1.5,
                "int8_mac": 0.3,
                "binary_mac": 0.00375,
                "fp16_sign_mac": 0.4,
                "fp32_elem": 0.9,
                "fp16_elem": 0.4,
                "int_elem": 0.03,
            },
            rel=1e-12,
        )
        assert set(TRAFFIC_KINDS) == set(count_tiny("standard").total.traffic)

    def test_ratio_and_table(self):
        std = step_energy(count_tiny("standard"))
        low = step_energy(count_tiny("lowcost"))
        ratio = energy_ratio(std, low)
        assert ratio["total"] == pytest.approx(std.total_j / low.total_j)
        assert ratio["memory"] > 1 and ratio["compute"] > 1
        row = {
            "model": "tiny",
            "recipe": "lowcost",
            "batch": B,
            "total_j": low.total_j,
            "compute_j": low.compute_j,
            "memory_j": low.memory_j,
            "traffic_bytes": 2**20,
            "ratio": ratio,
            "energy": low.as_dict(),
        }
        text = format_energy_table([row])
        assert f"{ratio['total']:.2f}x" in text and "1.0" in text and "not a measurement" in text


class TestRoundEnergy:
    def test_wifi_round_by_hand(self):
        out = round_energy(0.002, 60, 57_167, 1_000_000, radio="wifi")
        up = 57_167 * 8 * (283.17 + 132.86 / 10) * 1e-9
        down = 1_000_000 * 8 * (137.01 + 132.86 / 10) * 1e-9
        tail = 2 * (124.4 * 0.0791 + 119.3 * 0.2381) * 1e-3
        assert out["compute_j"] == pytest.approx(0.12)
        assert out["radio_up_j"] == pytest.approx(up)
        assert out["radio_down_j"] == pytest.approx(down)
        assert out["radio_tail_j"] == pytest.approx(tail)
        assert out["total_j"] == pytest.approx(0.12 + up + down + tail)

    def test_lte_tail_dominates_small_transfers(self):
        out = round_energy(0.0, 0, 57_167, 57_167, radio="lte")
        assert out["radio_tail_j"] == pytest.approx(2 * (1.2107 * 0.2601 + 1.06 * 11.576))
        assert out["radio_tail_j"] > 20 * (out["radio_up_j"] + out["radio_down_j"])
        no_tail = round_energy(0.0, 0, 57_167, 57_167, radio="lte", bursts=0)
        assert no_tail["radio_j"] == pytest.approx(out["radio_up_j"] + out["radio_down_j"])

    def test_step_energy_object_and_bad_inputs(self):
        e = step_energy(count_tiny("lowcost"))
        assert round_energy(e, 10, 0, 0, bursts=0)["total_j"] == pytest.approx(10 * e.total_j)
        with pytest.raises(ValueError, match="unknown radio '5g'"):
            round_energy(0.0, 1, 0, 0, radio="5g")
        with pytest.raises(ValueError, match="steps must be >= 0"):
            round_energy(0.0, -1, 0, 0)
        assert math.isclose(HOROWITZ_45NM.lte.joules_per_byte_up, 8e-9 * (438.39 + 1288.04 / 6))


class TestFederationRoundFields:
    """The per-round energy fields of a run's metrics.json (server/recorder.py)."""

    def test_local_steps(self):
        assert local_steps(250, 100) == 3  # 100 + 100 + 50
        assert local_steps(250, 100, epochs=2) == 6
        assert local_steps(250, 100, epochs=2, max_batches=2) == 4
        assert local_steps(100, 100, max_batches=5) == 1
        assert local_steps(0, 100) == 0
        with pytest.raises(ValueError, match="train.batch_size >= 1"):
            local_steps(10, 0)

    def test_a_literal_round_by_hand(self):
        # 3 steps of 1 mJ; 1,000 B sent, 2,000 B received; nothing before.
        out = device_round_fields(0.001, 3, 1_000, 2_000)
        wifi = (
            1_000 * 8e-9 * (283.17 + 132.86 / 10)  # 2.3716 mJ up
            + 2_000 * 8e-9 * (137.01 + 132.86 / 10)  # 2.4047 mJ down
            + 2 * 1e-3 * (124.4 * 0.0791 + 119.3 * 0.2381)  # 76.49 mJ: 2 promotions + tails
        )
        lte = (
            1_000 * 8e-9 * (438.39 + 1288.04 / 6)
            + 2_000 * 8e-9 * (51.97 + 1288.04 / 13)
            + 2 * 1e-3 * (1210.7 * 0.2601 + 1060.0 * 11.576)  # 25.17 J, the LTE tail
        )
        assert out["energy_steps"] == 3.0
        assert out["energy_compute_j"] == pytest.approx(0.003)
        assert out["energy_radio_wifi_j"] == pytest.approx(wifi)
        assert out["energy_radio_wifi_j"] == pytest.approx(0.0812671, rel=1e-5)
        assert out["energy_radio_lte_j"] == pytest.approx(lte)
        assert out["energy_radio_lte_j"] == pytest.approx(25.178567, rel=1e-6)
        assert out["energy_wifi_j"] == pytest.approx(0.003 + wifi)
        assert out["energy_lte_j"] == pytest.approx(0.003 + lte)
        assert out["energy_cumulative_wifi_j"] == out["energy_wifi_j"]
        # The next round adds to this one's cumulative sums.
        nxt = device_round_fields(0.001, 1.5, 0, 0, previous=out)
        assert nxt["energy_compute_j"] == pytest.approx(0.0015)
        tail_wifi = 2 * 1e-3 * (124.4 * 0.0791 + 119.3 * 0.2381)
        assert nxt["energy_cumulative_wifi_j"] == pytest.approx(
            out["energy_wifi_j"] + 0.0015 + tail_wifi
        )
        assert nxt["energy_cumulative_lte_j"] == pytest.approx(
            out["energy_lte_j"] + nxt["energy_lte_j"]
        )


class TestValgrindHelpers:
    """benchmarks/energy.py: reading callgrind dumps and setting them beside the model."""

    DUMP = (
        "# callgrind format\nversion: 1\ncreator: callgrind-3.19.0\n\n"
        "desc: LL cache: 524288 B, 64 B, 16-way associative\n"
        "desc: Trigger: Client Request: mlp/lowcost/1\n\n"
        "positions: line\nevents: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw\n"
        "summary: 100 40 10 1 4 2 1 3 1\n\nfn=(1) f\n5 100 40 10 1 4 2 1 3 1\n"
        "totals: 101 40 10 1 4 2 1 3 1\n"
    )

    def test_parse_dump(self):
        from benchmarks.energy import parse_callgrind_dump

        label, events = parse_callgrind_dump(self.DUMP)
        assert label == "mlp/lowcost/1"
        assert events == {
            "Ir": 100,
            "Dr": 40,
            "Dw": 10,
            "I1mr": 1,
            "D1mr": 4,
            "D1mw": 2,
            "ILmr": 1,
            "DLmr": 3,
            "DLmw": 1,
        }
        with pytest.raises(ValueError, match="no totals line"):
            parse_callgrind_dump("events: Ir\n")

    def test_compare_ratios(self):
        from benchmarks.energy import compare

        def row(recipe, ir, misses):
            ev = {"Ir": ir, "Dr": 10, "Dw": 0, "D1mr": 0, "D1mw": 0, "DLmr": misses, "DLmw": 0}
            return (
                {"model": "mlp", "recipe": recipe, "batch": 4, "in_shape": [1, 8, 8]}
                | ev
                | {"dram_bytes": misses * 64}
            )

        out = compare({"per_step": [row("standard", 300, 40), row("lowcost", 600, 10)]})
        (entry,) = out
        assert entry["valgrind_ratio"]["instructions"] == 0.5
        assert entry["valgrind_ratio"]["dram_bytes"] == 4.0
        std = step_energy(count_step("mlp", "standard", 4, (1, 8, 8)))
        low = step_energy(count_step("mlp", "lowcost", 4, (1, 8, 8)))
        assert entry["model_ratio"]["total_energy"] == pytest.approx(std.total_j / low.total_j)


class TestFederation30Energy:
    """benchmarks/energy.py: the 30-round MNIST federation's device energy, from saved JSON."""

    @staticmethod
    def run(variant, partition, wifi, lte, compute):
        rounds = [{"compute_j": compute}]
        return {
            "variant": variant,
            "partition": partition,
            "wifi": {"total_j": wifi, "rounds": rounds},
            "lte": {"total_j": lte, "rounds": rounds},
        }

    def test_ratios_by_hand(self):
        from benchmarks.energy import federation_ratios

        runs = [
            self.run("lowcost + mean", "IID", 10.0, 700.0, 3.0),
            self.run("float32 fedavg", "IID", 150.0, 1050.0, 10.0),
            self.run("lowcost + mean", "Dirichlet(0.5)", 20.0, 800.0, 3.0),
        ]
        (iid,) = federation_ratios(runs)  # Dirichlet has no baseline run: left out
        assert (iid["partition"], iid["variant"]) == ("IID", "lowcost + mean")
        assert iid["wifi"] == 15.0 and iid["lte"] == 1.5
        assert iid["compute_j"] == {"variant": 3.0, "baseline": 10.0}

    def test_refresh_from_the_saved_results(self, tmp_path):
        import shutil

        from benchmarks.common import RESULTS_DIR
        from benchmarks.energy import refresh_federation30

        for name in ("energy.json", "federation30.json"):
            shutil.copy(RESULTS_DIR / name, tmp_path / name)
        part = refresh_federation30(tmp_path / "energy.json", tmp_path / "federation30.json")
        assert part["steps_per_round"] == 54  # 6,000 examples per client, 10 % validation
        energy = json.loads((tmp_path / "energy.json").read_text())
        saved = energy["federation30"]
        assert saved["ratios"] == part["ratios"] and len(part["ratios"]) == 2
        fed = json.loads((RESULTS_DIR / "federation30.json").read_text())
        run = next(r for r in fed["runs"] if r["variant"].startswith("lowcost + "))
        mlp = next(m for m in energy["models"] if m["model"] == "mlp" and m["batch"] == 100)
        step = next(r["total_j"] for r in mlp["rows"] if r["recipe"] == "lowcost")
        first = next(r for r in run["rounds"] if r["round"] == 1)
        wifi_first = round_energy(step, 54, first["uplink_bytes"], first["downlink_bytes"])
        mine = next(r for r in part["runs"] if r["variant"] == run["variant"])
        assert mine["wifi"]["rounds"][0]["total_j"] == pytest.approx(wifi_first["total_j"])
        for r in part["ratios"]:
            assert r["wifi"] > r["lte"] > 1  # 1 bit saves most where bytes, not tails, cost
        assert (tmp_path / "energy.png").read_bytes()[:4] == b"\x89PNG"
