"""The `gradstore` command."""
