"""Grids and their outputs: the results layer (results/), leaderboards (leaderboard/) and the
speed and memory benchmarks (perf/)."""
