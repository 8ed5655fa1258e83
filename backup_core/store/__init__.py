"""The backup store: names, manifests, the catalog, verdicts and retention."""
