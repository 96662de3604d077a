"""Entry point `bitfed-sim` (placeholder until its issue lands)."""

from core.cli._stub import not_implemented


def main() -> None:
    """Run `bitfed-sim`."""
    not_implemented("bitfed-sim", "run the default federated simulation (digits, MLP, 10 clients)")
