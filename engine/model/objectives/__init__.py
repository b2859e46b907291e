"""Training objectives shared by the model families (no family, train or sampling import)."""
