"""The registry client and the puller every pulling backend shares.

* :mod:`crishim.registry.options`: :class:`~crishim.registry.options.PullOptions`,
  the options a pulling backend's own model subclasses (registries with
  their mirrors, TLS and credentials; timeouts; concurrent downloads).
* :mod:`crishim.registry.client`: :class:`~crishim.registry.client.RegistryClient`
  (endpoints and credentials per registry) handing out one
  :class:`~crishim.registry.session.Session` per pull, made of
  :mod:`~crishim.registry.endpoints` (clients and TLS),
  :mod:`~crishim.registry.auth` (credentials, the token flow as an
  ``httpx.Auth``), :mod:`~crishim.registry.session` (requests, manifests,
  error mapping), :mod:`~crishim.registry.download` (blobs: watchdog,
  resume) and :mod:`~crishim.registry.deadline`.
* :mod:`crishim.registry.puller`: :class:`~crishim.registry.puller.Puller`
  (resolve, platform choice, verified concurrent fetches into a
  :class:`~crishim.registry.plan.BlobSink`) and the
  :class:`~crishim.registry.plan.Plan` a backend commits; what backends do
  around it (:mod:`~crishim.registry.request`).
* :mod:`crishim.registry.archive`: image sources over OCI layouts and
  ``docker save`` archives, for ``crishim import``.

Submodules are imported on demand: the HTTP stack costs about 150 ms, and
configs without a pulling backend never pay it.
"""
