"""Where a backend writes: local directories and native memory (:mod:`.native`), object stores and
their uploads (:mod:`.remote`)."""
