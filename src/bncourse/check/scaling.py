"""Exercise checks of Chapter 2, feature scaling."""

__all__: list[str] = []
