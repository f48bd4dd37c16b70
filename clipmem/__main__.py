"""`python -m clipmem ...`: the one entry point for people, workers, torchrun and subprocesses."""

from clipmem.cli import main

main()
