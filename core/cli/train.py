"""Entry point `bitfed-train` (placeholder until its issue lands)."""

from core.cli._stub import not_implemented


def main() -> None:
    """Run `bitfed-train`."""
    not_implemented("bitfed-train", "train one BNN centrally on one dataset (Hydra, conf/)")
