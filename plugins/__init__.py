"""crishim's built-in plugins (installed as ``crishim_plugins``).

Each subpackage is one plugin, registered through the ``crishim.plugins``
entry-point group exactly as a third-party plugin would be.
"""
