"""`python -m tuneloop.cli`, the form launchers take: `torchrun --nproc_per_node 2 -m tuneloop.cli train ...`."""

from tuneloop.cli.app import main

main()
