"""Helpers shared by test packages: look-alike public dataset trees."""
