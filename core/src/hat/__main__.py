"""``python -m hat`` (what ``torchrun -m hat train ...`` runs)."""

from hat.cli import main

main()
