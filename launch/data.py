"""Entry point ``bitfed-data``: fetch datasets and inspect federated partitions.

::

    bitfed-data download mnist --root data/mnist [--base-url URL]
    bitfed-data partition-stats --dataset digits --clients 10 --kind dirichlet --alpha 0.1 \
        [--png stats.png]

Every bad input ends in one ``bitfed-data: error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from core.config import PartitionConfig
from core.data import DATASET_NAMES, PARTITION_KINDS, DataError, download, load_dataset
from core.data.stats import format_stats, partition_stats, save_stats_png

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """Build the ``bitfed-data`` argument parser (two sub-commands)."""
    parser = argparse.ArgumentParser(
        prog="bitfed-data", description="Download datasets and inspect federated partitions."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    dl = sub.add_parser("download", help="fetch a dataset's official files, verified and atomic")
    dl.add_argument("name", choices=DATASET_NAMES)
    dl.add_argument("--root", required=True, help="destination folder (dataset.root=...)")
    dl.add_argument("--base-url", default=None, help="mirror to fetch from instead of the source")
    dl.add_argument("--svhn-extra", action="store_true", help="also fetch SVHN's extra_32x32.mat")

    ps = sub.add_parser("partition-stats", help="per-client sizes and label histograms")
    ps.add_argument("--dataset", default="digits", choices=DATASET_NAMES)
    ps.add_argument("--root", default="", help="dataset folder (not needed for digits)")
    ps.add_argument("--split", default="train", choices=("train", "test"))
    ps.add_argument("--svhn-extra", action="store_true")
    ps.add_argument("--clients", type=int, default=10, help="number of clients")
    ps.add_argument("--kind", default="iid", choices=PARTITION_KINDS)
    ps.add_argument("--alpha", type=float, default=PartitionConfig.alpha)
    ps.add_argument("--shards-per-client", type=int, default=PartitionConfig.shards_per_client)
    ps.add_argument("--val-fraction", type=float, default=PartitionConfig.val_fraction)
    ps.add_argument("--seed", type=int, default=PartitionConfig.seed)
    ps.add_argument("--png", default=None, help="also draw the label histograms into this PNG")
    return parser


def _download(args: argparse.Namespace) -> None:
    files = download(
        args.name,
        args.root,
        base_url=args.base_url,
        svhn_extra=args.svhn_extra,
        progress=lambda line: print(f"{args.name}: {line}", flush=True),
    )
    if files:
        print(f"{args.name}: {len(files)} file(s) verified in {args.root}")


def _partition_stats(args: argparse.Namespace) -> None:
    try:
        cfg = PartitionConfig(
            kind=args.kind,
            alpha=args.alpha,
            shards_per_client=args.shards_per_client,
            val_fraction=args.val_fraction,
            seed=args.seed,
        )
    except ValueError as exc:  # the config's own one-line message
        raise DataError(str(exc)) from None
    data = load_dataset(args.dataset, args.root or None, args.split, svhn_extra=args.svhn_extra)
    stats = partition_stats(data.labels, args.clients, cfg, data.num_classes)
    detail = {
        "iid": "",
        "dirichlet": f", alpha={cfg.alpha:g}",
        "shards": f", {cfg.shards_per_client} shards/client",
    }[cfg.kind]
    title = (
        f"{data.name} {args.split}: {len(data)} examples, {args.clients} clients, "
        f"{cfg.kind}{detail}, val_fraction={cfg.val_fraction:g}, seed={cfg.seed}"
    )
    print(format_stats(stats, title))
    if args.png:
        print(f"wrote {save_stats_png(stats, args.png, title)}")


def main(argv: list[str] | None = None) -> int:
    """Run ``bitfed-data``; return (and, as a console script, exit with) the status."""
    args = build_parser().parse_args(argv)
    try:
        {"download": _download, "partition-stats": _partition_stats}[args.command](args)
    except DataError as exc:
        print(f"bitfed-data: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "bitfed-data: interrupted; rerun to resume (partial .part files are kept)",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
