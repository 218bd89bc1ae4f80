"""Shipped data files (a package so that the wheel's package-data patterns include them)."""
