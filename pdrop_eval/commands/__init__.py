"""One module per `pdrop-eval` subcommand (see pdrop_eval.cli)."""
