"""``python -m hub`` runs the CLI (needed for ``torchrun -m hub train ...``)."""

from hub.cli import main

if __name__ == "__main__":
    main()
