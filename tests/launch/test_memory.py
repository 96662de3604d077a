"""bitfed-memory: fresh subprocess per recipe, --json object, ratios, table, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.memory import compute_ratios, format_table, main

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
