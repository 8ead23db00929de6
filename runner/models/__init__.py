"""Model families. Each family module owns loading, encoding and the training objective."""
