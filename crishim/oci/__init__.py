"""OCI content shared by backends.

``spec``: the vocabulary (media types, annotation keys, the digest check,
descriptors, JSON documents, chain IDs, platform choice, artifacts);
``names``: the names an entry gives its image; ``resolve``: an image's top
descriptor to a record, over any blob store; ``layout``: reading and
editing an OCI image layout (``safefs``: without leaving it); ``store``:
the content store pulls write; ``atomic``: write aside, fsync, rename;
``indexing``: what the layout backends do around a layout (re-reading
with reuse, publishing, removals, following index.json); ``snapshot``:
index snapshots for fast restarts; ``usage``: what a store occupies;
``coalesce``: background work whose requests coalesce.
"""
