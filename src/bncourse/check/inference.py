"""Exercise checks of Chapter 4, train vs test."""

__all__: list[str] = []
