"""The `edge-agent` command: one module per subcommand, each thin over the packages."""
