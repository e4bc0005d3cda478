"""Test helpers for the containerd backend: a real containerd and what runs on it.

* :mod:`.process`: containerd 1.6 started with a generated config, all its
  state in temporary directories, and cleaned up completely;
* :mod:`.images`: a runnable busybox image and a pause image built with
  LayoutBuilder, imported with ``ctr`` or pushed to the test registry;
* :mod:`.cri`: running host-network pods and containers through the CRI
  RuntimeService stubs;
* :mod:`.fixtures`: pytest fixtures tying them together (``pytest_plugins``).
"""
