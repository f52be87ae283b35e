"""Running pipelines: loading a pipeline folder, one generation, model families' call defaults, prompt files,
video files, and torchrun helpers. Knows no cache and no particular model."""
