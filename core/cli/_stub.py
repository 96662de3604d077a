"""Placeholder for an entry point whose issue has not landed yet: says so and exits non-zero."""

import sys


def not_implemented(command: str, what: str) -> None:
    """Print what ``command`` will do once implemented and exit with status 2."""
    print(f"{command}: not implemented yet; it will {what}", file=sys.stderr)
    raise SystemExit(2)
