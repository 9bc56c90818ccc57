"""The write path every backend shares: inputs checked (:mod:`.inputs`), stored arrays described for
the native pipeline (:mod:`.zarr_arrays`), the engine's budget (:mod:`.budget`) and ownership
(:mod:`.engine`), the backend lifecycle (:mod:`.lifecycle`) and many-rank coordination (:mod:`.ranks`)."""
