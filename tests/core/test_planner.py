"""largest_batch: exponential then bracketing search over measured step peaks."""

import pytest

from core.planner import PlanResult, largest_batch, measured_peak, parse_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def linear(fixed, per_sample, calls=None):
    """A fake probe: peak = fixed + per_sample * batch (records the batches asked for)."""

    def probe(batch):
        if calls is not None:
            calls.append(batch)
        return fixed + per_sample * batch

    return probe


def test_finds_the_exact_largest_batch_of_a_linear_peak():
    calls = []
    plan = largest_batch("cnv", "lowcost", 1_000_000, probe=linear(100_000, 7_000, calls),
                         resolution=0.0)  # fmt: skip
    assert plan.batch == 128  # 100000 + 7000 * 128 = 996000 <= 1e6 < 1003000
    assert plan.peak_bytes == 996_000 and not plan.extrapolated
    assert plan.proof is not None and plan.proof.batch == 128 and plan.proof.fits
    assert any(p.batch == 129 and not p.fits for p in plan.probes)
    assert calls[:9] == [1, 2, 4, 8, 16, 32, 64, 128, 256]  # exponential phase
    assert len(calls) <= 12  # interpolation needs few probes after it
    assert len(calls) == len(set(calls))  # each batch measured once


def test_step_shaped_peaks_still_give_a_proved_answer():
    peaks = {b: 10_000 + 1_000 * b + (50_000 if b > 40 else 0) for b in range(1, 300)}
    plan = largest_batch("mlp", "lowcost", 80_000, probe=peaks.__getitem__, resolution=0.0)
    assert plan.batch == 40  # 50000 fits; 41 jumps to 101000
    assert plan.proof.peak_bytes == 50_000


def test_resolution_bounds_the_error():
    plan = largest_batch("cnv", "lowcost", 10_000_000, probe=linear(0, 10_000), resolution=0.1)
    assert 900 <= plan.batch <= 1000  # the truth is 1000
    assert plan.proof.fits and plan.proof.batch == plan.batch


def test_nothing_fits_says_why():
    plan = largest_batch("cnv", "standard", "1KiB", probe=linear(5_000, 10))
    assert plan.batch == 0 and not plan.fits and plan.proof is None
    assert "batch 1 needs 5010 bytes" in plan.reason and "nothing fits" in plan.reason
    assert [p.batch for p in plan.probes] == [1]


def test_beyond_the_probed_range_is_extrapolated_and_labelled():
    plan = largest_batch("mlp", "lowcost", 10_000_000, probe=linear(1_000, 100), max_probe_batch=64)
    assert plan.extrapolated and plan.proof is None
    assert plan.batch == 64 + (10_000_000 - (1_000 + 6_400)) // 100  # from batches 32 and 64
    assert plan.peak_bytes <= 10_000_000
    assert "extrapolated" in plan.reason
    assert max(p.batch for p in plan.probes) == 64
    as_dict = plan.as_dict()
    assert as_dict["extrapolated"] is True and as_dict["fits"] is True


def test_parse_bytes_units_and_errors():
    assert parse_bytes("64MiB") == 64 * 2**20
    assert parse_bytes("48 MB") == 48_000_000
    assert parse_bytes("2k") == 2000
    with pytest.raises(ValueError, match="64MiB"):
        parse_bytes("64 parsecs")
    with pytest.raises(ValueError, match="> 0"):
        parse_bytes("0MiB")


def test_a_tiny_budget_forces_a_small_measured_batch():
    """Real probes (MemTracker peaks of real steps) on the small MLP: the answer fits and the
    next batch does not."""
    shape = (1, 8, 8)
    budget = measured_peak("mlp", "lowcost-bop", 12, in_shape=shape)
    plan = largest_batch("mlp", "lowcost-bop", budget, in_shape=shape, resolution=0.0)
    assert isinstance(plan, PlanResult) and not plan.extrapolated
    assert 12 <= plan.batch < 100
    assert plan.proof.peak_bytes <= budget
    assert measured_peak("mlp", "lowcost-bop", plan.batch + 1, in_shape=shape) > budget
