"""The store's persistence: Lance tables of gradient vectors, their provenance, the
selection and evaluation logs (``database.Database``, over ``catalog``, ``reader``,
``writer`` and ``log``), and the streamed gradient source over a table."""
