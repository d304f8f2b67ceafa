"""One thin module per subcommand: parse options, make one core call, write the output."""
