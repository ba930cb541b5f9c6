"""TFDS builders for the datasets training reads.

The builders read their sources (`manual_dir`) with local file calls by
design: a build always runs on local files, a bucket's manual_dir being
copied down first and a bucket's data_dir written through a local staging
folder (`data_prep/build.py`, `_prepare_through_staging`).
"""
