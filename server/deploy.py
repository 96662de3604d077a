"""Entry point `bitfed-server` (placeholder until its issue lands)."""

from core.cli._stub import not_implemented


def main() -> None:
    """Run `bitfed-server`."""
    not_implemented("bitfed-server", "start a SuperLink and submit the bitfed run")
