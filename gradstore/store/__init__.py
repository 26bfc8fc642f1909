"""The store's persistence: LanceDB tables of gradient vectors, their provenance, the
selection log (``database.Database``), and the streamed gradient source over a table."""
