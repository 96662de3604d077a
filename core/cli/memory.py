"""Entry point `bitfed-memory` (placeholder until its issue lands)."""

from core.cli._stub import not_implemented


def main() -> None:
    """Run `bitfed-memory`."""
    not_implemented("bitfed-memory", "measure training memory per recipe")
