"""The resume stores: `memory` (one process, the default) and `redis` (shared by a cluster).

Both implement `wsgate.core.store.Store`; the composition root picks one from `[store]`.
"""
