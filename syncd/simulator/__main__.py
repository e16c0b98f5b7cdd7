"""``python -m syncd.simulator``: serve the simulator without the rest of syncd."""

from __future__ import annotations

import argparse

from syncd.simulator.server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the InventoryArts simulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--orders", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    serve(args.host, args.port, orders=args.orders, seed=args.seed)


if __name__ == "__main__":
    main()
