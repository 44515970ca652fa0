"""The page store and what it stands on: codecs, same-fill detection, shared memory, the
arena and the pending ring, configuration and statistics, and the device facade."""
