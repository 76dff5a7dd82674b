"""Model families: how each registered architecture is built. Importing this package registers them."""
from zoo.families import vision  # noqa: F401  (registers the vision entries)
