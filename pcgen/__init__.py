"""pcgen, the product: the `pcgen` command line, the offline demo and the tiny-LM trainer, on top of pc_core."""
