"""Reverse programs: the backend contract, planner, executor and forward recorders."""
