"""Task heads (LightningModules), one module per head family; ``toolkit.heads`` registers them."""
