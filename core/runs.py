"""Where a run writes its outputs: one rule for every entry point.

``output_dir`` when set; else Hydra's run folder when running under ``@hydra.main``; else
``outputs/<date>/<time>`` (Hydra's own pattern) relative to the working directory.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from core.config import ExperimentConfig

__all__ = ["run_folder", "RunFailed", "check_trained"]


def run_folder(cfg: ExperimentConfig) -> Path:
    """Return the folder this run writes ``metrics.json`` and the rest into (see the module)."""
    if cfg.output_dir:
        return Path(cfg.output_dir)
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ImportError, ValueError):  # not under @hydra.main: mirror Hydra's layout
        return Path("outputs") / datetime.now().strftime("%Y-%m-%d/%H-%M-%S")


class RunFailed(RuntimeError):
    """A run that finished without training: reported in one line, exit status non-zero."""


def check_trained(rounds: list[dict]) -> None:
    """Raise :class:`RunFailed` when no round of ``rounds`` (``metrics.json``) applied an update.

    Every round skipped means every sampled client failed, was rejected or had nothing to send;
    such a run must not end like a success.
    """
    ran = [r for r in rounds if r.get("round", 0) > 0]
    if ran and all(r.get("skipped") for r in ran):
        failed = sum(int(r.get("failed", 0)) for r in ran)
        rejected = sum(int(r.get("rejected", 0)) for r in ran)
        empty = sum(int(r.get("empty", 0)) for r in ran)
        raise RunFailed(
            f"no round produced an update ({len(ran)} rounds skipped; {failed} client failures, "
            f"{rejected} rejected replies, {empty} clients without a training example): see the "
            "per-round table and the server log for why"
        )
