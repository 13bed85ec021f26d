"""The pure core of Orion: orders, stock, the order saga. Standard library only, no I/O."""
