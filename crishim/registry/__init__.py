"""The registry client and the puller every pulling backend shares.

* :mod:`crishim.registry.options`: :class:`~crishim.registry.options.PullOptions`,
  the options a pulling backend's own model subclasses (registries with
  their mirrors, TLS and credentials; timeouts; concurrent downloads).
* :mod:`crishim.registry.client`: :class:`~crishim.registry.client.RegistryClient`
  (endpoints and credentials per registry) and the per-pull
  :class:`~crishim.registry.client.Session` (auth challenges, deadlines, size
  limits, error mapping).
* :mod:`crishim.registry.puller`: :class:`~crishim.registry.puller.Puller`
  (resolve, platform choice, verified concurrent fetches into a
  :class:`~crishim.registry.puller.BlobSink`) and the
  :class:`~crishim.registry.puller.Plan` a backend commits.

Submodules are imported on demand: the HTTP stack costs about 150 ms, and
configs without a pulling backend never pay it.
"""
