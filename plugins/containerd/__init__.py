"""The containerd backend: crishim in front of containerd's own image store."""
