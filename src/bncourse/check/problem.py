"""Exercise checks of Chapter 1, the problem."""

__all__: list[str] = []
