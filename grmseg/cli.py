"""Command line: ``python -m grmseg <command>``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="grmseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="GRM inside DeepLabV3: one training step on a random batch, timed")
    demo.add_argument("--batch", type=int, default=2)
    demo.add_argument("--size", type=int, default=129)
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--seed", type=int, default=0)
    sub.add_parser("info", help="what was built and which backends run here")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from grmseg.demo import run_demo

        run_demo(batch=args.batch, size=args.size, device=args.device, seed=args.seed)
    elif args.command == "info":
        import grmseg

        summary = getattr(grmseg, "build_summary", None)
        if summary is not None:
            print(summary())
        else:
            for status in grmseg.backends().values():
                print(status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
