"""Posteriors → notes: decoders below the models, so models, train and infer share them."""
