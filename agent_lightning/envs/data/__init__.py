"""Task data of the built-in environments (shipped with the package; nothing is downloaded)."""
