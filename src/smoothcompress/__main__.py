"""``python -m smoothcompress`` (used by ``torchrun -m smoothcompress train ...``)."""

from smoothcompress.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
