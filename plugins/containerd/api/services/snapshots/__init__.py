"""Generated package: do not edit; regenerate with scripts/gen_proto.py."""
