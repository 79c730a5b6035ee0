"""Exercise checks of Chapter 3, the BN flow."""

__all__: list[str] = []
