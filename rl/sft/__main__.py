"""`python -m rl.sft key=value ...`: one SFT stage (rl.sft.train)."""

import sys

from rl.sft.train import main

main(sys.argv[1:])
