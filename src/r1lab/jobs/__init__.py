"""Data-generating stages as Hydra-configured jobs: rejection sampling, preference pairs, reward-model
scoring, the replay mix of iterative RL.

A job is a class that ``conf/job/<name>.yaml`` builds (``_target_``) and that has
``run(output_dir) -> dict[str, float]``: it writes its files under ``output_dir`` (the run's Hydra
folder unless the job is told another one) and returns the numbers that ``metrics.json`` records.
``python -m r1lab.train stage=<stage>`` runs a job stage like a training stage (``r1lab.train``), so the
pipeline runner treats every stage alike. Jobs resume: run again into the same folder after a kill,
a job continues where it stopped and writes the files of an uninterrupted run.
"""
