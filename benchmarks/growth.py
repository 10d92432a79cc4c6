"""Growth benchmark as a script: ``lionagi-qe bench --growth`` with the same options.

Usage::

    python benchmarks/growth.py [--growth-sizes 10000,100000,1000000] [--database-url URL]
                                [--ops N] [--repeat R] [--json] [--plot FILE.png] [--smoke]

The machinery is :mod:`lionagi_qe.bench.growth`; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import sys

from lionagi_qe.cli import app


def main(argv: list[str] | None = None) -> None:
    """Run ``lionagi-qe bench --growth`` with ``argv`` (default: the command line)."""
    args = sys.argv[1:] if argv is None else argv
    app(["bench", "--growth", *args], prog_name="growth.py")


if __name__ == "__main__":
    main()
