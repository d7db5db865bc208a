"""alicode_gw: a self-hosted Claude API gateway."""

__version__ = "0.1.0"
