"""aromni core library: model, tokenizers, decoding, training, I/O. Knows nothing of the CLI."""
