"""`python -m edgegen`: the edgegen command."""

from .cli import main_exit

main_exit()
