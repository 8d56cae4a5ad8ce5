"""Stand-in package (see tests/standins/a1111/README.md)."""
