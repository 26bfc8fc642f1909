"""Operations: what the commands do, over the store's persistence and the parts below
(``ingest``, ``select``, ``import``, ``export``, the warm-up and the ``run`` pipeline)."""
