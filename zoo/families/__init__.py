"""Model families: how each registered architecture is built. Importing this package registers them."""
from zoo.families import invertible, mcbert, translation, vision, wavernn  # noqa: F401  (each module registers its entries)
