"""Speed and memory benchmarks; each writes its figures under results/bench/."""
