"""Guest boot: memory layout, kernel loaders (one module per format) and boot data."""
