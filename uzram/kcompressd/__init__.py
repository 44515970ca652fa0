"""kcompressd: the worker processes that compress staged pages, and the dispatcher and
worker pool that drive them from the nbdkit process."""
