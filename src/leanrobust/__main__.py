"""`python -m leanrobust`: the same command line as the `leanrobust` script."""
from .cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
