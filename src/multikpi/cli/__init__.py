"""The `multikpi` command line."""
