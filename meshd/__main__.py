"""Allow ``python -m meshd`` as an alias of the ``meshd`` console script."""

from meshd.cli import main

main()
