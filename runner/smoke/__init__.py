"""CI smoke runs: a user's own TrainingJob, shrunk, end to end on the CPU (`trainingjob run FILE --smoke`).

    shrink    the pure spec transform (what changes for the CPU, and why)
    checks    what the real run needs but the smoke cannot do (tokens, tracker packages, Hub repos, the budget)
    report    Check records, the text report and JUnit XML
    session   the order of things: checks, dataset samples, then the ordinary cache and train stages
    command   the command-line options (shared by `run --smoke` and `smoke`)

The modules imported by `command` and the planning path never import torch at module level.
"""
