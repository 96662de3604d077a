"""Entry point `bitfed-data` (placeholder until its issue lands)."""

from core.cli._stub import not_implemented


def main() -> None:
    """Run `bitfed-data`."""
    not_implemented("bitfed-data", "download datasets and print partition statistics")
