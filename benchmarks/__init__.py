"""fused_rnn's benchmark suite: fused_rnn vs torch.nn (cuDNN) vs the PyTorch reference loop
(and a torch.compile'd step loop), in one process, on the workloads of BENCHMARKS.md.

Run ``python -m benchmarks --help``. Layout, one job per module:
    workloads    the shapes                     cells        the cells and who implements them
    inputs       shared inputs and weights       loops        pure-PyTorch step loops
    contenders   how each implementation is built for a case
    timing       timers and peak memory          correctness  --check: do contenders agree
    suite        runs a plan                     report       JSON, table, plot
    environment  machine and versions            run          the command line
"""
