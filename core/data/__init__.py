"""The ds003020 dataset: its reader and writers, audio, TextGrids and the folder check.

Modules
-------
dataset   the ds003020-layout reader and writers (audio, responses, TextGrids, ROI masks, splits)
audio     reading, writing and resampling wav files
textgrid  reading and writing Praat TextGrids (word and phone tiers)
check     ``python -m core.check``: validate a dataset folder as users have it
"""
