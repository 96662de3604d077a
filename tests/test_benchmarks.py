"""benchmarks/: the report generator on fake results, the batch search, and one real quick run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import MIB, write_json
from benchmarks.max_batch import search_max_batch
from benchmarks.report import load_results, render

REPO = Path(__file__).resolve().parents[1]
MACHINE = {
    "cpu": "Fake CPU 9000",
    "usable_cpus": 2,
    "threads": 1,
    "torch": "2.13.0+cpu",
    "date": "2026-01-02 03:04 UTC",
    "git": "abc1234",
    "load_avg_1min": 0.5,
}


def _speed_result():
    recipes = {
        "standard": (0.010, 1.0, 1.0, 1.0),
        "lowcost": (0.025, 2.5, 2.4, 2.6),
        "lowcost-po2": (0.030, 3.0, 2.9, 3.1),
    }
    return {
        "name": "speed",
        "quick": True,
        "command": "python -m benchmarks.speed --quick",
        "machine": MACHINE,
        "seconds": 12.0,
        "config": {},
        "models": [
            {
                "model": "mlp",
                "batch": 100,
                "rounds": 7,
                "recipes": {
                    name: {
                        "step_seconds": s,
                        "samples_per_second": 100 / s,
                        "ratio_to_standard": r,
                        "ratio_q1": q1,
                        "ratio_q3": q3,
                    }
                    for name, (s, r, q1, q3) in recipes.items()
                },
            }
        ],
    }


class TestReport:
    def test_renders_numbers_provenance_and_states(self, tmp_path):
        write_json(tmp_path / "speed.json", _speed_result())
        write_json(
            tmp_path / "federation.json",
            {
                "name": "federation",
                "machine": MACHINE,
                "seconds": 1.0,
                "skipped": "MNIST not found at /nowhere",
            },
        )
        write_json(
            tmp_path / "server_cost.json",
            {
                "name": "server_cost",
                "machine": MACHINE,
                "seconds": 1.0,
                "error": "RuntimeError: boom",
            },
        )
        (tmp_path / "notes.json").write_text(json.dumps({"unrelated": 1}))  # ignored: no name
        results = load_results(tmp_path)
        assert set(results) == {"speed", "federation", "server_cost"}
        text = render(results, tmp_path, tmp_path)
        # every figure from the JSON, with its machine line
        assert "| mlp | 100 | lowcost | 25.0 | 4,000 | 2.50× (2.40–2.60) | 7 |" in text
        assert "Fake CPU 9000 (2 CPUs), 1 torch thread(s), torch 2.13.0+cpu" in text
        assert "2026-01-02 03:04 UTC" in text and "quick run" in text
        assert "mlp 2.50×" in text and "slower than" in text  # the summary, derived
        # skipped, failed and missing benchmarks say so
        assert "**Skipped:** MNIST not found at /nowhere" in text
        assert "**Failed in this run:** `RuntimeError: boom`" in text
        assert "Not run yet: `python -m benchmarks.memory`" in text
        assert "![speed]" not in text  # no PNG was written, so no broken image link

    def test_broken_json_names_the_file(self, tmp_path):
        (tmp_path / "speed.json").write_text("{not json")
        with pytest.raises(ValueError, match="speed.json"):
            load_results(tmp_path)


class TestMaxBatchSearch:
    @staticmethod
    def _probe(state, per_sample, seconds_per_sample=0.0):
        calls = []

        def probe(batch):
            calls.append(batch)
            return {"peak": state + per_sample * batch, "seconds": seconds_per_sample * batch}

        return probe, calls

    def test_brackets_the_exact_answer_of_a_linear_peak(self):
        probe, calls = self._probe(10 * MIB, 20_000)
        points = {8: probe(8), 32: probe(32)}
        found = search_max_batch(probe, 64 * MIB, points, tolerance=0.03, max_probe_seconds=1e9)
        exact = (64 * MIB - 10 * MIB) // 20_000  # largest B with state + B * per <= budget
        assert found["status"] == "bracketed"
        assert exact * 0.97 <= found["batch"] <= exact < found["upper"]
        assert found["upper"] - found["batch"] <= max(1, int(0.03 * found["batch"]))
        assert points[found["batch"]]["peak"] <= 64 * MIB < points[found["upper"]]["peak"]
        # 32 -> 128 -> 512 -> 2048 at most GROWTH-fold, then the secant converges in a few
        assert len(calls) <= 2 + 3 + 3

    def test_state_larger_than_budget_fits_nothing(self):
        probe, _ = self._probe(100 * MIB, 1_000)
        points = {8: probe(8), 32: probe(32)}
        found = search_max_batch(probe, 64 * MIB, points, tolerance=0.03, max_probe_seconds=1e9)
        assert found["status"] == "none" and found["batch"] == 0 and 2 in points

    def test_slow_probe_is_extrapolated_not_run(self):
        probe, calls = self._probe(0, 1_000, seconds_per_sample=1.0)
        points = {8: probe(8), 32: probe(32)}
        found = search_max_batch(probe, 64 * MIB, points, tolerance=0.03, max_probe_seconds=100)
        assert found["status"] == "extrapolated" and found["batch"] == 32
        assert abs(found["estimate"] - 64 * MIB / 1_000) <= 1
        assert calls == [8, 32]

    def test_extrapolation_starts_near_the_answer_when_small_batches_are_flat(self):
        # Fixed temporaries dominate below batch 40 (as byte-sized slices do): a line through
        # batches 8 and 32 has 1/100 of the true slope; the estimate must not come from it.
        def probe(batch):
            return {"peak": 10 * MIB + 100_000 * max(batch, 40) + 1_000 * batch, "seconds": batch}

        points = {8: probe(8), 32: probe(32)}
        found = search_max_batch(probe, 64 * MIB, points, tolerance=0.03, max_probe_seconds=300)
        exact = (64 * MIB - 10 * MIB) // 101_000
        assert found["status"] == "extrapolated"
        assert abs(found["estimate"] - exact) <= 0.1 * exact, (found, exact)
        assert max(points) <= 300  # no probe predicted slower than the limit ran


def _run(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env |= {
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_HOME": str(tmp_path / "flwr"),
    }
    return subprocess.run(
        [sys.executable, "-m", *args, "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_server_cost_quick_run_measures_the_strategy(tmp_path):
    done = _run(["benchmarks.server_cost", "--quick", "--models", "mlp", "--ks", "10"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads((tmp_path / "server_cost.json").read_text())
    assert res["machine"]["threads"] == 1 and res["machine"]["torch"]
    rows = {r["rule"]: r for r in res["rows"]}
    assert set(rows) == {"aligned", "mean", "majority", "fedavg"}
    for row in rows.values():
        assert row["seconds"] > 0 and row["peak_bytes"] > 0
    # a float32 reply is ~30x a 1-bit one (32 bits vs 1 bit + scales + float16 BN state)
    assert 20 < rows["fedavg"]["input_bytes"] / rows["mean"]["input_bytes"] < 33
    assert (tmp_path / "server_cost.png").stat().st_size > 10_000


def test_federation_without_mnist_is_skipped_with_reason(tmp_path):
    done = _run(
        ["benchmarks.federation", "--quick", "--mnist-root", str(tmp_path / "no")], tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads((tmp_path / "federation.json").read_text())
    assert "MNIST not found" in res["skipped"] and "--mnist-root" in res["skipped"]
    assert not (tmp_path / "federation.png").exists()


def test_federation30_is_federation_with_its_own_name(tmp_path):
    done = _run(["benchmarks.federation30", "--mnist-root", str(tmp_path / "no")], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads((tmp_path / "federation30.json").read_text())
    assert res["name"] == "federation30" and "MNIST not found" in res["skipped"]
    assert res["command"].startswith("python -m benchmarks.federation30 --mnist-root")
    assert not (tmp_path / "federation.json").exists()


def test_a_renamed_result_records_the_module_that_ran(tmp_path):
    args = ["--name", "fed-x", "--mnist-root", str(tmp_path / "no")]
    done = _run(["benchmarks.federation", *args], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads((tmp_path / "fed-x.json").read_text())
    assert res["command"].startswith("python -m benchmarks.federation --name fed-x ")


def test_run_all_logs_its_timings_and_the_report_states_them(tmp_path):
    report = tmp_path / "BENCH.md"
    done = _run(
        [
            "benchmarks.run_all",
            "--only",
            "federation30,federation",
            "--jobs",
            "2",
            "--quick",
            "--mnist-root",
            str(tmp_path / "no"),
            "--report",
            str(report),
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    log = json.loads((tmp_path / "run_all.json").read_text())
    assert log["quick"] is True and log["jobs"] == 2
    assert list(log["benchmarks"]) == ["federation30", "federation"]  # the order asked for
    assert all(t["exit"] == 0 for t in log["benchmarks"].values())
    assert log["seconds"] >= max(t["seconds"] for t in log["benchmarks"].values()) > 0
    assert "ran 2 benchmark(s) in one go, 2 at a time," in report.read_text()


def test_federation_rejects_unknown_variants(tmp_path):
    done = _run(["benchmarks.federation", "--variants", "mean,fedprox"], tmp_path)
    assert done.returncode == 2 and "unknown variant(s) ['fedprox']" in done.stderr


def test_committed_results_render_every_section():
    from benchmarks.common import RESULTS_DIR
    from benchmarks.report import title_of

    results = load_results(RESULTS_DIR) if RESULTS_DIR.is_dir() else {}
    if not results:
        pytest.skip("no results in benchmarks/results yet (run make bench)")
    text = render(results, RESULTS_DIR, REPO)
    for name in results:
        assert f"## {title_of(name)}" in text
    assert text.count("*Run:*") == len(results)  # each section names its machine and date


def _bop_measured(peak_mib, process_mib, saved_mib, state_mib, categories_mib):
    return {
        "peak_step_bytes": peak_mib * MIB,
        "peak_step_process_bytes": process_mib * MIB,
        "saved_bytes": saved_mib * MIB,
        "state": {"total": state_mib * MIB},
        "peak_categories": {k: v * MIB for k, v in categories_mib.items()},
        "peak_where": "optimizer step or loss",
    }


def _bop_result():
    """Two models, three recipes, two epochs: MLP meets its peak target (5× >= 4×), CNV
    misses its (5× < 8×); lowcost-bop is faster for the MLP, slower for CNV; accuracy met."""
    peaks = {  # model: {recipe: MiB of (peak, process peak, saved, state)}
        "mlp": {"standard": (40, 41, 12, 24), "lowcost": (10, 11, 1, 6),
                "lowcost-bop": (8, 9, 1, 2)},
        "cnv": {"standard": (160, 170, 96, 32), "lowcost": (40, 42, 6, 8),
                "lowcost-bop": (32, 33, 6, 4)},
    }  # fmt: skip
    memory = [
        {
            "model": model,
            "recipe": recipe,
            "batch": 100,
            "measured": _bop_measured(p, q, s, t, {"Parameter": t / 2, "Optstate": t / 2}),
        }
        for model, recipes in peaks.items()
        for recipe, (p, q, s, t) in recipes.items()
    ]
    timing = [
        {
            "model": "mlp",
            "batch": 100,
            "step_seconds": {"lowcost": 0.040, "lowcost-bop": 0.030},
            "cpu_seconds": {"lowcost": 0.039, "lowcost-bop": 0.029},
        },
        {
            "model": "cnv",
            "batch": 100,
            "step_seconds": {"lowcost": 1.5, "lowcost-bop": 1.65},
            "cpu_seconds": {"lowcost": 1.4, "lowcost-bop": 1.54},
        },
    ]
    accuracy = [
        {
            "recipe": recipe,
            "epochs": 2,
            "test_accuracy": accs[-1],
            "history": [{"epoch": i + 1, "test_accuracy": a} for i, a in enumerate(accs)],
            "seconds": 120.0,
        }
        for recipe, accs in (("lowcost", [0.95, 0.97]), ("lowcost-bop", [0.94, 0.965]))
    ]
    accuracy[1]["bop"] = {"gamma": 0.001, "threshold": 0.02}
    return {
        "name": "bop",
        "quick": False,
        "command": "python -m benchmarks.bop",
        "machine": MACHINE,
        "seconds": 600.0,
        "config": {"models": ["mlp", "cnv"], "rounds": 3, "steps": 10, "epochs": 2},
        "memory": memory,
        "timing": timing,
        "accuracy": accuracy,
    }


class TestBopReport:
    def test_registered_as_section_8_between_gpu_and_energy(self):
        from benchmarks.bop import TARGETS
        from benchmarks.report import ORDER, RENDERERS
        from benchmarks.report_bop import PEAK_TARGETS, render_bop

        names = list(ORDER)
        assert names.index("gpu") + 1 == names.index("bop") < names.index("energy")
        assert ORDER["bop"] == "8. Latent-free training (lowcost-bop): memory, time, accuracy"
        assert RENDERERS["bop"] is render_bop
        assert PEAK_TARGETS == TARGETS  # the report judges by the benchmark's (issue 16's)

    def test_ratios_and_marks_from_the_numbers(self, tmp_path):
        write_json(tmp_path / "bop.json", _bop_result())
        text = render(load_results(tmp_path), tmp_path, tmp_path)
        section = text.split("## 8. Latent-free training (lowcost-bop): memory, time, accuracy")[1]
        section = section.split("\n## ")[0]
        assert "**Cannot render" not in section and "Fake CPU 9000" in section
        # memory: peak, process peak, saved, state, standard ÷ recipe of the peak
        assert "| lowcost-bop | 8.00 | 9.00 | 1.00 | 2.00 | 5.00× |" in section
        assert "| lowcost | 40.00 | 42.00 | 6.00 | 8.00 | 4.00× |" in section
        assert "| standard | 160.00 | 170.00 | 96.00 | 32.00 | 1.00× |" in section
        assert "- `lowcost-bop` at the peak: Parameter 1.00, Optstate 1.00 MiB." in section
        assert "whole-step peak ratio ≥ 4× for the MLP, ≥ 8× for CNV, ≥ 6× for BinaryNet" in section
        assert "- MLP: measured 5.00× against ≥ 4× — **met**." in section
        assert "- CNV: measured 5.00× against ≥ 8× — **missed**." in section
        assert "BinaryNet: not run." in section
        # time: lowcost-bop ÷ lowcost, MLP faster, CNV slower
        assert "| MLP | 100 | 0.0400 | 0.0300 | 0.750× |" in section
        assert "| CNV | 100 | 1.500 | 1.650 | 1.100× | 1.400 | 1.540 | 1.100× |" in section
        assert (
            "no slower than lowcost for any model: wall clock **missed** (slower: CNV 1.100×); "
            "CPU time **missed** (slower: CNV 1.100×)."
        ) in section
        # accuracy: last epoch, difference in points, both parts of the target
        assert "| lowcost | 0.9700 | 2 | 120 |" in section
        assert "| lowcost-bop | 0.9650 | 2 | 120 |" in section
        assert "`lowcost-bop` − `lowcost` after epoch 2: -0.50 pp" in section
        assert "within 1 pp of lowcost and ≥ 95 %: **met**" in section
        assert "arXiv 1906.02107" in section and "1 bit each" in section
        assert "float16 moment per weight" in section

    def test_accuracy_below_the_floor_is_missed(self):
        from benchmarks.report_bop import render_bop

        res = _bop_result()
        res["accuracy"][1]["history"][-1]["test_accuracy"] = 0.94
        text = "\n".join(render_bop(res))
        assert "-3.00 pp" in text and "within 1 pp of lowcost and ≥ 95 %: **missed**" in text

    def test_quick_shape_without_accuracy_renders_what_is_there(self):
        from benchmarks.report_bop import render_bop

        res = _bop_result()
        res["quick"] = True
        res["config"]["models"] = ["mlp"]
        res["memory"] = [r for r in res["memory"] if r["model"] == "mlp"]
        res["timing"] = res["timing"][:1]
        res["accuracy"] = []  # --skip-accuracy
        text = "\n".join(render_bop(res))
        assert "- MLP: measured 5.00× against ≥ 4× — **met**." in text
        assert "CNV, BinaryNet: not run (quick run: the MLP only)." in text
        assert "wall clock **met** (ratio ≤ 1 for every model)" in text
        assert "**MNIST MLP accuracy**: not run (`--skip-accuracy`)" in text
        del res["accuracy"], res["timing"]
        text = "\n".join(render_bop(res))
        assert "not measured in this run" in text and "accuracy**: not run" in text


def _federation_run(partition, variant, strategy, final):
    rounds = [
        {"round": 0, "accuracy": 0.1, "cumulative_bytes": 0},
        {"round": 1, "accuracy": final, "cumulative_bytes": 10 * MIB},
    ]
    return {
        "variant": variant,
        "partition": partition,
        "recipe": variant.split(" ")[0],
        "strategy": strategy,
        "float32_bytes": 1_600_000,
        "num_weights": 400_000,
        "final_accuracy": final,
        "final_broadcast_accuracy": final,
        "last3_accuracy": final,
        "best_accuracy": final,
        "total_bytes": 10 * MIB,
        "uplink_bytes_per_client_round": 57_000,
        "downlink_bytes_per_client_round_after_first": 57_000,
        "first_round_at_95": None,
        "client_peak_memory": 200 * MIB,
        "downlink_bytes_per_message": 55_000,
        "lr_schedule": "cosine",
        "options": {},
        "server_seconds": 90.0,
        "wall_seconds": 100.0,
        "rounds": rounds,
    }


class TestFederationVariants:
    def test_bop_is_a_variant_on_request_with_its_own_recipe(self, tmp_path):
        import argparse

        from benchmarks.federation import DEFAULT_VARIANTS, VARIANT_KEYS, experiment

        assert "bop" in VARIANT_KEYS and "bop" not in DEFAULT_VARIANTS
        args = argparse.Namespace(
            per_round=None, clients=10, mnist_root=tmp_path, max_batches=0, rounds=30, set=[]
        )
        cfg = experiment(args, VARIANT_KEYS["bop"], "IID", tmp_path)
        assert (cfg.recipe.name, cfg.strategy.name) == ("lowcost-bop", "mean")

    def test_bop_section_judges_the_gap_to_lowcost_mean(self, tmp_path):
        res = {
            "name": "federation30-bop",
            "command": "python -m benchmarks.federation30 --name federation30-bop",
            "machine": MACHINE,
            "seconds": 100.0,
            "config": {"clients": 10, "rounds": 1, "max_batches": 0, "batch_size": 100},
            "runs": [
                _federation_run("IID", "lowcost + mean", "mean", 0.950),
                _federation_run("IID", "lowcost-bop + mean", "mean", 0.9385),
                _federation_run("Dirichlet(0.5)", "lowcost + mean", "mean", 0.930),
                _federation_run("Dirichlet(0.5)", "lowcost-bop + mean", "mean", 0.925),
            ],
        }
        write_json(tmp_path / "federation30-bop.json", res)
        text = render(load_results(tmp_path), tmp_path, tmp_path)
        section = text.split("## 8b. Latent-free training in a federation")[1].split("\n## ")[0]
        assert "- IID: `lowcost-bop` − `lowcost` = -1.15 pp (**missed**)." in section
        assert "- Dirichlet(0.5): `lowcost-bop` − `lowcost` = -0.50 pp (**met**)." in section


def test_compact_state_section_renders_the_federation_table(tmp_path):
    res = {
        "name": "federation-compact",
        "command": "python -m benchmarks.federation --name federation-compact",
        "machine": MACHINE,
        "seconds": 100.0,
        "config": {"clients": 10, "rounds": 1, "max_batches": 20, "batch_size": 100},
        "runs": [_federation_run("IID", "lowcost + aligned", "aligned", 0.9012)],
    }
    write_json(tmp_path / "federation-compact.json", res)
    text = render(load_results(tmp_path), tmp_path, tmp_path)
    section = text.split("## 4c. Federation with compact client state")[1].split("\n## ")[0]
    assert "`federation.compact_state=true`" in section and "**Cannot render" not in section
    assert "| IID | lowcost + aligned | 0.9012 |" in section


def test_partial_participation_section_judges_every_round_after_the_first_fifth(tmp_path):
    one_bit = _federation_run("Dirichlet(0.5)", "lowcost + aligned", "aligned", 0.90)
    f32 = _federation_run("Dirichlet(0.5)", "float32 fedavg", "fedavg", 0.905)
    # 10 rounds: round 2 is in the first fifth (its -10 pp is not judged), round 6 is -4 pp
    one_bit["rounds"] = [{"round": k, "accuracy": a} for k, a in enumerate(
        [0.1, 0.5, 0.6, 0.8, 0.85, 0.86, 0.84, 0.88, 0.89, 0.9, 0.90])]  # fmt: skip
    f32["rounds"] = [{"round": k, "accuracy": a} for k, a in enumerate(
        [0.1, 0.6, 0.7, 0.8, 0.86, 0.87, 0.88, 0.89, 0.90, 0.90, 0.905])]  # fmt: skip
    f32["downlink_bytes_per_message"], f32["uplink_bytes_per_client_round"] = 1_650_000, 1_650_000
    res = {
        "name": "federation-partial",
        "command": "python -m benchmarks.federation --name federation-partial --per-round 5",
        "machine": MACHINE,
        "seconds": 100.0,
        "config": {
            "clients": 50,
            "clients_per_round": 5,
            "rounds": 10,
            "max_batches": 0,
            "batch_size": 100,
        },  # fmt: skip
        "runs": [one_bit, f32],
    }
    write_json(tmp_path / "federation-partial.json", res)
    text = render(load_results(tmp_path), tmp_path, tmp_path)
    section = text.split("## 4e. Federation with partial participation")[1].split("\n## ")[0]
    assert "50 clients, 5 sampled at random each round" in section
    assert "final -0.50 pp vs float32 FedAvg (**met**" in section
    assert "round 6, -4.00 pp (**missed**" in section
    assert "(30.0× fewer), uplink 28.9× fewer" in section


def _scale_run(population, per_round, bytes_per_client):
    return {
        "population": population,
        "per_round": per_round,
        "rounds": 3,
        "seconds_per_round": 12.5,
        "startup_seconds": 40.0,
        "peak_tree_rss_mib": 2048.0,
        "clients_with_state": 250,
        "bytes_per_client": bytes_per_client,
        "server_published_bytes": 3 * MIB,
        "empty": [10, 12, 9],
        "skipped": 0,
        "final_accuracy": 0.5,
    }


@pytest.mark.parametrize(("largest", "verdict"), [(900_000, "**met**"), (1_200_000, "**missed**")])
def test_scale_section_table_and_disk_verdict(tmp_path, largest, verdict):
    res = {
        "name": "scale",
        "command": "python -m benchmarks.scale",
        "machine": MACHINE,
        "seconds": 100.0,
        "config": {
            "max_batches": 2,
            "batch_size": 100,
            "compact_state": True,
            "recipe": "lowcost",
            "strategy": "mean",
        },
        "runs": [_scale_run(1_000, 20, 400_000), _scale_run(100_000, 100, largest)],
    }
    write_json(tmp_path / "scale.json", res)
    text = render(load_results(tmp_path), tmp_path, tmp_path)
    section = text.split("## 10. Simulation at scale")[1].split("\n## ")[0]
    assert "| 100,000 | 100 | 3 | 12.5 | 40 | 2,048 | 250 | " + f"{largest:,}" in section
    assert "| 31 | 0 | 0.5000 |" in section  # empty replies summed over rounds
    assert f"largest {largest:,} B, {verdict}" in section
