"""benchmarks/arm64_compose.py's pure parts: the per-round table read from bitfed-server's
streamed output, and the emulation-only sitecustomize (which must touch nothing else)."""

import sys
import types

from benchmarks.arm64_compose import EMULATION_SITECUSTOMIZE, _rounds_seen

LINES = [
    "\x1b[92mINFO \x1b[0m:      round 0/2: accuracy 0.1058, loss 26.6990, up - B, down - B",
    "\x1b[92mINFO \x1b[0m:      round 1: sent to 3 nodes (chain: 3)",
    "\x1b[92mINFO \x1b[0m:      \t└──> Aggregated MetricRecord: {'sampled': 3.0, 'valid': 3.0, "
    "'rejected': 0.0, 'failed': 0.0, 'skipped': 0.0, 'train_accuracy': 0.83}",
    "\x1b[92mINFO \x1b[0m:      round 1/2: accuracy 0.7465, loss 0.9163, up 34127 B, down 0 B",
    "\x1b[92mINFO \x1b[0m:      \t└──> MetricRecord: {'accuracy': 0.7465, 'loss': 0.9163}",
    "\x1b[92mINFO \x1b[0m:      \t└──> Aggregated MetricRecord: {'sampled': 3.0, 'valid': 2.0, "
    "'rejected': 1.0, 'failed': 0.0, 'skipped': 0.0}",
    "\x1b[92mINFO \x1b[0m:      round 2/2: accuracy 0.8440, loss 0.6890, up 34127 B",
]


def test_rounds_carry_accuracy_replies_and_arrival_times():
    table = _rounds_seen(LINES, {0: 50.0, 1: 706.2, 2: 924.4})
    assert table["0"] == {"accuracy": 0.1058, "at_seconds": 50.0}
    assert table["1"] == {
        "accuracy": 0.7465, "sampled": 3, "valid": 3, "rejected": 0, "failed": 0,
        "skipped": False, "at_seconds": 706.2,
    }  # fmt: skip
    assert table["2"]["valid"] == 2 and table["2"]["rejected"] == 1
    assert sorted(table) == ["0", "1", "2"]


def test_sitecustomize_widens_only_the_task_store_window():
    name = "flwr.supercore.corestate.in_memory_corestate"
    finders = list(sys.meta_path)
    imported = sys.modules.get(name)  # another test's import stays the module everyone holds
    try:
        exec(compile(EMULATION_SITECUSTOMIZE, "sitecustomize.py", "exec"), {})
        widen = sys.meta_path[0]
        assert widen.find_spec("flwr.common.constant", None) is None  # nothing else touched
        spec = widen.find_spec(name, None)
        module = types.ModuleType(name)
        spec.loader.exec_module(module)
        assert module.HEARTBEAT_DEFAULT_INTERVAL == 600
    finally:
        sys.meta_path[:] = finders
        if imported is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = imported
