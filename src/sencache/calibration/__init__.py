"""Measuring what the caches need from a model: SenCache's sensitivity profile (secants along trajectories or
noised videos), the baselines' tables (MagCache ratios, TeaCache polynomial) and the per-sample correction's
normaliser. Calibration prompts never serve as evaluation prompts."""
