"""Exercise checks of Chapter 5, the benefits."""

__all__: list[str] = []
