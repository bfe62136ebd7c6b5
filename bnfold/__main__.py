"""``python -m bnfold``: the CLI (guarded, so worker processes can import this module)."""

from bnfold.cli import main

if __name__ == "__main__":
    main()
