"""OCI image-layout support shared by backends: reading, atomic writes, GC."""
