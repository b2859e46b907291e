"""Shipped Textual themes, one TOML file per theme."""
