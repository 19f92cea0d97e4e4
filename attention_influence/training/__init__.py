"""Proxy pretraining: small causal LMs trained from scratch on the selection's arms (see `proxy`)."""
