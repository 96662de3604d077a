"""Entry point `bitfed-client` (placeholder until its issue lands)."""

from core.cli._stub import not_implemented


def main() -> None:
    """Run `bitfed-client`."""
    not_implemented("bitfed-client", "start a SuperNode on this device")
