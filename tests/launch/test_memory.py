"""bitfed-memory: fresh subprocess per recipe, --json object, ratios, table, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.memory import compute_ratios, format_plans, format_table, main

REPO = Path(__file__).resolve().parents[2]


def bitfed_memory(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("bitfed-memory")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "launch.memory"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=timeout)


def fake_result(peak, saved, state, analytical, seconds):
    return {
        "analytical": {"total": analytical},
        "measured": {
            "peak_step_bytes": peak,
            "peak_step_process_bytes": peak + 10,
            "peak_gap": 0.5 if peak == 300 else 0.01,
            "flagged": peak == 300,
            "saved_bytes": saved,
            "saved_by_dtype": {"float32": saved},
            "state": {"total": state},
            "peak_categories": {"Parameter": state, "Activation": peak - state},
            "peak_where": "backward of 1 (Linear)",
        },
        "step_seconds": seconds,
    }


def test_ratios_and_table_from_literal_results():
    recipes = {
        "standard": fake_result(1200, 800, 400, 1000, 0.2),
        "lowcost": fake_result(300, 100, 200, 250, 0.25),
    }
    ratios = compute_ratios(recipes)
    assert ratios["lowcost"]["peak_step"] == pytest.approx(4.0)
    assert ratios["lowcost"]["saved"] == pytest.approx(8.0)
    assert ratios["lowcost"]["state"] == pytest.approx(2.0)
    assert ratios["lowcost"]["analytical"] == pytest.approx(4.0)
    assert ratios["lowcost"]["step_seconds"] == pytest.approx(1.25)  # recipe / standard
    assert compute_ratios({"lowcost": recipes["lowcost"]}) == {}
    report = {
        "model": "mlp",
        "batch_size": 100,
        "in_shape": [1, 28, 28],
        "torch": "x",
        "threads": 1,
        "recipes": recipes,
        "ratios": ratios,
    }
    table = format_table(report)
    assert "4.00x" in table and "8.00x" in table and "1.25x" in table
    assert "50%!" in table  # the flagged gap is marked
    assert "more than 10%" in table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "lenet", "--batch-size", "4"], "unknown model 'lenet'"),
        (["--model", "mlp"], "--batch-size"),
        (["--model", "mlp", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["--model", "mlp", "--batch-size", "4", "--recipes", "fp8"], "unknown recipe(s) ['fp8']"),
        (["--model", "mlp", "--batch-size", "4", "--in-shape", "3,x"], "--in-shape"),
        (["--model", "mlp", "--budget", "64parsecs"], "--budget: memory size '64parsecs' is not"),
        (["--model", "mlp", "--budget", "0MiB"], "must be > 0 bytes"),
        (["--model", "mlp", "--budget", "64MiB", "--batch-size", "4"], "not both"),
        (["--model", "mlp", "--budget", "64MiB", "--max-batch", "0"], "--max-batch must be >= 1"),
    ],
)
def test_bad_input_is_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bitfed-memory: error:"), err
    assert message in lines[0]


def test_json_report_for_real_mlp():
    done = bitfed_memory(
        "--model", "mlp", "--batch-size", "32", "--recipes", "standard,lowcost",
        "--steps", "2", "--threads", "1", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {"model", "batch_size", "recipes", "ratios"} <= set(report)
    assert (report["model"], report["batch_size"]) == ("mlp", 32)
    assert list(report["recipes"]) == ["standard", "lowcost"]
    std, low = report["recipes"]["standard"]["measured"], report["recipes"]["lowcost"]["measured"]
    # The lowcost step keeps no float32 activation for backward: packed bits and fp16 only.
    assert low["saved_bytes"] * 8 < std["saved_bytes"]
    assert low["saved_by_dtype"].get("float32", 0) < std["saved_by_dtype"]["float32"] / 8
    assert low["state"]["total"] < std["state"]["total"]
    ratios = report["ratios"]["lowcost"]
    assert ratios["peak_step"] > 1.5 and ratios["saved"] > 8 and ratios["state"] > 1.5
    assert ratios["analytical"] > 2.0
    assert ratios["step_seconds"] > 0
    for m in (std, low):
        assert m["peak_step_process_bytes"] is not None
        assert m["steps_timed"] == len(m["step_seconds_all"]) == 2  # timed in a second process
        assert min(m["step_seconds_all"]) <= m["step_seconds"] <= max(m["step_seconds_all"])


def test_table_is_the_default_output(monkeypatch, capsys):
    calls = []

    def fake_isolated(model, recipe, batch_size, **kwargs):
        calls.append((model, recipe, batch_size, kwargs["in_shape"], kwargs["po2_bias"]))
        return (
            fake_result(1200, 800, 400, 1000, 0.2)
            if recipe == "standard"
            else (fake_result(300, 100, 200, 250, 0.25))
        )

    monkeypatch.setattr("launch.memory.measure_recipe_isolated", fake_isolated)
    main(["--model", "cnv", "--batch-size", "7", "--recipes", "standard,lowcost-po2",
          "--po2-bias", "6"])  # fmt: skip
    out = capsys.readouterr().out
    assert calls == [
        ("cnv", "standard", 7, (3, 32, 32), 6),
        ("cnv", "lowcost-po2", 7, (3, 32, 32), 6),
    ]
    assert "measuring cnv/lowcost-po2 at batch 7" in out
    assert "at peak (backward of 1 (Linear))" in out and "4.00x" in out
    assert not out.lstrip().startswith("{")


def test_worker_failure_is_one_line(monkeypatch, capsys):
    def failing(*args, **kwargs):
        raise RuntimeError("measuring mlp/standard failed: out of memory")

    monkeypatch.setattr("launch.memory.measure_recipe_isolated", failing)
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "mlp", "--batch-size", "4", "--json"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bitfed-memory: error: measuring mlp/standard failed: out of memory"]


def test_cuda_figures_and_cuda_failure_in_ratios_and_table():
    std = fake_result(1200, 800, 400, 1000, 0.2)
    low = fake_result(300, 100, 200, 250, 0.25)
    std["cuda"] = {"cuda_max_allocated_bytes": 3000, "peak_step_bytes": 2900, "step_seconds": 0.1}
    low["cuda"] = {"cuda_max_allocated_bytes": 1000, "peak_step_bytes": 900, "step_seconds": 0.1}
    assert compute_ratios({"standard": std, "lowcost": low})["lowcost"]["cuda_max_allocated"] == 3.0
    low["cuda"] = {"error": "RuntimeError: expected all tensors on the same device"}
    ratios = compute_ratios({"standard": std, "lowcost": low})
    assert ratios["lowcost"]["cuda_max_allocated"] is None
    report = {"model": "mlp", "batch_size": 1, "in_shape": [1, 2, 2], "torch": "x", "threads": 1,
              "recipes": {"standard": std, "lowcost": low}, "ratios": ratios}  # fmt: skip
    table = format_table(report)
    assert "cuda: not measured (RuntimeError: expected all tensors" in table
    assert "cuda max_memory_allocated" in table


def test_energy_table_per_recipe_with_compute_memory_split(capsys):
    from core.energy import count_step, step_energy

    main(["--model", "mlp", "--batch-size", "100", "--recipes", "standard,lowcost", "--energy"])
    out = capsys.readouterr().out
    std = step_energy(count_step("mlp", "standard", 100, (1, 28, 28)))
    low = step_energy(count_step("mlp", "lowcost", 100, (1, 28, 28)))
    lines = {line.split()[2]: line.split() for line in out.splitlines() if line.startswith("mlp")}
    # total, compute and memory mJ per step, then std/recipe
    assert lines["standard"][3:6] == [f"{e * 1e3:.2f}" for e in (5.6048e-3, 0.4673e-3, 5.1375e-3)]
    assert lines["lowcost"][3:6] == [
        f"{e * 1e3:.2f}" for e in (low.total_j, low.compute_j, low.memory_j)
    ]
    assert lines["lowcost"][-1] == f"{std.total_j / low.total_j:.2f}x" == "3.47x"
    assert "not a measurement" in out


def test_energy_json_and_device_class(capsys, tmp_path):
    args = ["--model", "mlp", "--batch-size", "100", "--recipes", "standard,lowcost", "--energy"]
    main([*args, "--json"])
    base = json.loads(capsys.readouterr().out)
    assert base["device_class"] == "horowitz-45nm" and "not measured" in base["note"]
    low = base["recipes"]["lowcost"]
    assert low["total_j"] == pytest.approx(low["compute_j"] + low["memory_j"])
    assert low["ratio"]["total"] == pytest.approx(3.466, rel=1e-3)
    main([*args, "--json", "--energy-device", "horowitz-45nm-sram"])
    sram = json.loads(capsys.readouterr().out)["recipes"]["lowcost"]
    assert sram["memory_j"] == pytest.approx(low["memory_j"] * 100 / 1300)  # 1 MB SRAM vs DRAM
    assert sram["compute_j"] == pytest.approx(low["compute_j"])
    override = tmp_path / "phone.toml"
    override.write_text('device_class = "phone"\ndram_pj = 650.0\n')
    main([*args, "--json", "--energy-constants", str(override)])
    phone = json.loads(capsys.readouterr().out)
    assert phone["device_class"] == "phone"
    assert phone["recipes"]["lowcost"]["memory_j"] == pytest.approx(low["memory_j"] / 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "mlp", "--energy"], "--energy needs --batch-size"),
        (["--model", "mlp", "--energy", "--budget", "1MiB"], "--energy (modelled energy"),
        (
            ["--model", "mlp", "--batch-size", "4", "--energy", "--energy-device", "phone"],
            "unknown device class 'phone'",
        ),
        (
            ["--model", "mlp", "--batch-size", "4", "--energy-device", "horowitz-45nm-sram"],
            "need --energy",
        ),  # fmt: skip
        (
            ["--model", "mlp", "--batch-size", "4", "--energy", "--energy-constants", "/no.toml"],
            "cannot read --energy-constants /no.toml",
        ),
    ],
)
def test_energy_bad_input_is_one_line(args, message, capsys):
    test_bad_input_is_one_line(args, message, capsys)


# --- the batch planner: --budget ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"), [("64MiB", 64 * 2**20), ("48MB", 48_000_000), ("1GiB", 2**30),
                           ("4096", 4096)],
)  # fmt: skip
def test_budget_units_reach_the_planner(text, expected, monkeypatch, capsys):
    asked = []

    def fake_plan(model, recipe, budget, **kwargs):
        asked.append((model, recipe, budget, kwargs["in_shape"]))
        return plan_dict(7, proof=(7, 100), over=(8, budget + 1))

    monkeypatch.setattr("launch.memory.plan_recipe_isolated", fake_plan)
    main(["--model", "cnv", "--budget", text, "--recipe", "lowcost-bop", "--json"])
    assert asked == [("cnv", "lowcost-bop", expected, (3, 32, 32))]
    assert json.loads(capsys.readouterr().out)["budget_bytes"] == expected


def plan_dict(batch, *, proof=None, over=None, extrapolated=False, probes=()):
    rows = [{"batch": b, "peak_bytes": p, "fits": True} for b, p in probes]
    if proof:
        rows.append({"batch": proof[0], "peak_bytes": proof[1], "fits": True})
    if over:
        rows.append({"batch": over[0], "peak_bytes": over[1], "fits": False})
    return {
        "batch": batch, "peak_bytes": proof[1] if proof else 3 * 2**20,
        "extrapolated": extrapolated, "fits": batch >= 1, "probes": rows,
        "proof": None if not proof else rows[-2 if over else -1],
    }  # fmt: skip


def test_plan_table_names_the_proof_and_labels_extrapolation():
    report = {
        "model": "cnv", "budget_bytes": 64 * 2**20, "in_shape": [3, 32, 32], "torch": "x",
        "threads": 1,
        "plans": {
            "standard": plan_dict(0, over=(2, 70 * 2**20)),
            "lowcost": plan_dict(300, proof=(300, 63 * 2**20), over=(306, 65 * 2**20)),
            "lowcost-bop": plan_dict(
                5000, extrapolated=True, probes=((2048, 20 * 2**20), (4096, 40 * 2**20))
            ),
        },
    }  # fmt: skip
    lines = format_plans(report).splitlines()
    assert "64.00 MiB" in lines[0]
    std, low, bop = lines[-3:]
    assert std.split()[:2] == ["standard", "0"] and "nothing fits: batch 2 measured 70.00" in std
    assert low.split()[:3] == ["lowcost", "300", "63.00"]
    assert "measured: batch 300 peaks at 63.00 MiB; batch 306 at 65.00 MiB does not fit" in low
    assert bop.split()[:2] == ["lowcost-bop", "5000"] and "EXTRAPOLATED, not measured" in bop
    assert "up to batch 4096 (40.00 MiB)" in bop


def test_budget_plan_for_real_mlp_in_a_fresh_process():
    """Real probes in one subprocess: the answer is proved by a measured probe under the budget
    and the batch after it was measured over it (resolution 2 %: exact below batch 100)."""
    budget = 1_520_000  # the 8x8 MLP under lowcost: ~1.42 MiB at batch 32, ~1.48 MiB at 64
    done = bitfed_memory(
        "--model", "mlp", "--budget", str(budget), "--recipe", "lowcost", "--in-shape", "1,8,8",
        "--max-batch", "128", "--threads", "1", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    plan = report["plans"]["lowcost"]
    assert report["budget_bytes"] == budget and not plan["extrapolated"]
    assert 8 <= plan["batch"] < 128
    assert plan["proof"]["batch"] == plan["batch"] and plan["proof"]["peak_bytes"] <= budget
    assert {"batch": plan["batch"] + 1, "fits": False} in [
        {k: p[k] for k in ("batch", "fits")} for p in plan["probes"]
    ]
    assert all(p["fits"] == (p["peak_bytes"] <= budget) for p in plan["probes"])
    assert plan["probes"][0]["batch"] == 2  # batch norm: the smallest batch that trains
