"""An extra receiver process of a node (``node.receiver_processes`` > 1).

Started by the node's main process, never by hand::

    python -m cem_node.receiver NODE_ID < settings.json

It reads the effective settings as JSON on standard input (so that command
line overrides and secrets reach it without a file), listens on the node's
port with SO_REUSEPORT and only receives: the main process runs the
scheduler, the worker and the exporter. It stops on SIGTERM, and when its
parent dies (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import json
import sys

from cem_node.config import Settings
from cem_node.logs import configure_logging
from cem_node.node import Node


def main(argv: list[str] | None = None) -> None:
    """Run one receiver process until SIGTERM."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m cem_node.receiver NODE_ID < settings.json")
    settings = Settings.from_mapping(json.load(sys.stdin))
    configure_logging(settings.logging)
    node = Node(settings, node_id=args[0], receiver_only=True)
    node.start()
    node.run_until_signalled()


if __name__ == "__main__":
    main()
