"""The `tuneloop` command line: one module per noun, each command a thin call into the core."""
