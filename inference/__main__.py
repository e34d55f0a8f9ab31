"""`python -m inference SUBCOMMAND`: see inference/cli.py."""

from inference.cli import main

if __name__ == "__main__":
    main()
