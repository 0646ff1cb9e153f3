from cem_node.cli import main

main()
