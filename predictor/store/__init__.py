"""Model directories: manifests, weights through safe loaders, architectures, export."""
