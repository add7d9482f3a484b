"""`python -m rl.data.pipeline`: see rl/data/pipeline/run.py."""

from rl.data.pipeline.run import main

if __name__ == "__main__":
    main()
