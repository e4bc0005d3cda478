"""Test helpers for the registry-cache backend: a real registry and its surroundings.

* :mod:`.process`: the Debian ``docker-registry`` (CNCF distribution) started
  on 127.0.0.1 with a temporary config;
* :mod:`.pki`: a test CA, server and client certificates, a token signing key;
* :mod:`.tokens`: a token issuer implementing the docker token flow;
* :mod:`.proxy`: an HTTP proxy that counts, slows down or corrupts responses;
* :mod:`.push`: pushing images built by LayoutBuilder through the distribution API;
* :mod:`.images`: the images the tests push;
* :mod:`.fixtures`: pytest fixtures tying them together (``pytest_plugins``).
"""
