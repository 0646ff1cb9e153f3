"""Run a node with the test-double analysis in its own process (for kill -9 tests).

    python -m tests.node_process CONFIG.toml [--pause S] [--marker FILE]

The same as ``cem-node --config CONFIG.toml serve`` but with
:class:`tests.analysis_double.DoubleAnalyser` as the analysis. Prints
``READY <port>`` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cem_node.config import load_settings
from cem_node.logs import configure_logging
from cem_node.node import Node
from tests.analysis_double import DoubleAnalyser


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--marker", type=Path)
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    configure_logging(settings.logging)
    node = Node(settings, analyser=DoubleAnalyser(pause_s=args.pause, started_marker=args.marker))
    node.start()
    port = node.port if "receiver" in node.roles else 0  # a worker listens for no DICOM
    print(f"READY {port}", flush=True)
    node.run_until_signalled()
    sys.exit(0)


if __name__ == "__main__":
    main()
