"""`python -m normbench.bench` (what `make bench` runs): normbench/bench/step.py."""

from normbench.bench.step import main

if __name__ == "__main__":
    main()
