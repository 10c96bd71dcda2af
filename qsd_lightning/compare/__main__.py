"""``python -m qsd_lightning.compare``: see :mod:`qsd_lightning.compare.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
