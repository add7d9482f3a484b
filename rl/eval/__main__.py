"""`python -m rl.eval key=value ...`: evaluate a checkpoint (rl.eval.evaluate)."""

from rl.eval.evaluate import main

main()
