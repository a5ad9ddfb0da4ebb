"""GANet model parts: neck, head, targets, losses and the decoder."""
