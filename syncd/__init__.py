"""syncd: keeps a local database in step with an InventoryArts account."""

__version__ = "0.1.0"
